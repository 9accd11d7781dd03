"""A folder of class subfolders of images as a labelled dataset (no TensorFlow here).

Accepted layouts (class names are the sorted subfolder names; files starting with '.' are
ignored)::

    root/train/<class>/*.jpg  root/val/<class>/*.jpg     (or root/validation/...)
    root/train/<class>/*.jpg                              (validation carved off train)
    root/<class>/*.jpg                                    (validation carved off)

Carving is deterministic and stable: within each class, files are ordered by a hash of their
name and the first ``round(val_fraction * n)`` go to validation, so adding or removing a file
moves no other file between splits.

Every file is checked once when the folder is scanned (header and pixel data, decoded at a
reduced scale where the format allows it): zero-byte files, non-images, truncated or corrupt
images and formats TensorFlow cannot decode are skipped and counted in one warning, so that a
bad file never stops an epoch halfway. Grayscale, palette, CMYK and alpha images are kept: the
decoder turns them into RGB.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import warnings

import numpy as np
from PIL import Image

# Formats tf.io.decode_image / decode_jpeg read (MPO is a JPEG with extra frames).
DECODABLE_FORMATS = frozenset({'JPEG', 'MPO', 'PNG', 'GIF', 'BMP', 'WEBP'})
TRAIN_DIRS = ('train',)
VAL_DIRS = ('val', 'validation')


class FolderDatasetError(ValueError):
  """The image folder cannot be used as a dataset; the message says how to fix it."""


class SkippedFilesWarning(UserWarning):
  """Some files of an image folder are not readable images and were left out."""


@dataclasses.dataclass(frozen=True)
class FolderSplit:
  paths: np.ndarray  # (N,) object array of absolute file paths, sorted.
  labels: np.ndarray  # (N,) int32 class indices.


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  class_names: tuple[str, ...]
  splits: dict[str, FolderSplit]  # 'train' and 'validation'.
  skipped: tuple[tuple[str, str], ...]  # (path, reason) of every file left out.


def check_image(path: str) -> str | None:
  """None if ``path`` is an image TensorFlow can decode, else the reason it is not."""
  try:
    if os.path.getsize(path) == 0:
      return 'empty file'
    with Image.open(path) as image:
      if image.format not in DECODABLE_FORMATS:
        return f'unsupported format {image.format}'
      # JPEG: decode at 1/8 scale; still reads all the data, so truncation is caught cheaply.
      image.draft('RGB', (max(1, image.width // 8), max(1, image.height // 8)))
      image.load()
  except Exception as e:  # pylint: disable=broad-except  (any failure means "not an image")
    return f'{type(e).__name__}: {e}'
  return None


def _list_files(directory: str) -> list[str]:
  out = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith('.'))
  return out


def _class_dirs(directory: str) -> list[str]:
  return sorted(d for d in os.listdir(directory)
                if not d.startswith('.') and os.path.isdir(os.path.join(directory, d)))


def _scan_classes(directory: str, class_names, skipped: list, require_all: bool):
  """{class name: sorted list of readable image paths} for the class folders in ``directory``."""
  found = {}
  for name in _class_dirs(directory):
    if name not in class_names:
      raise FolderDatasetError(
          f'Class folder {os.path.join(directory, name)} has no counterpart in the training '
          'folder; give the training folder the same class folders or remove it.')
    good = []
    for path in _list_files(os.path.join(directory, name)):
      reason = check_image(path)
      if reason is None:
        good.append(path)
      else:
        skipped.append((path, reason))
    if not good and require_all:
      raise FolderDatasetError(
          f'Class folder {os.path.join(directory, name)} contains no readable images; add images '
          'to it or remove it.')
    found[name] = good
  return found


def _hash_order(paths: list[str]) -> list[str]:
  return sorted(paths, key=lambda p: hashlib.sha1(os.path.basename(p).encode()).hexdigest())


def _as_split(by_class: dict[str, list[str]], class_names) -> FolderSplit:
  paths, labels = [], []
  for label, name in enumerate(class_names):
    for path in sorted(by_class.get(name, ())):
      paths.append(path)
      labels.append(label)
  return FolderSplit(np.array(paths, dtype=object), np.array(labels, np.int32))


def _first_existing(root: str, names) -> str | None:
  for name in names:
    if os.path.isdir(os.path.join(root, name)):
      return os.path.join(root, name)
  return None


@functools.lru_cache(maxsize=16)
def scan_folder(folder: str, val_fraction: float = 0.1) -> FolderIndex:
  """Indexes an image folder once per process (see the module docstring for the layouts)."""
  folder = os.path.abspath(os.path.expanduser(folder))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'Image folder {folder} does not exist; set data.folder to a '
                            'directory of class subfolders of images.')
  train_dir = _first_existing(folder, TRAIN_DIRS) or folder
  val_dir = _first_existing(folder, VAL_DIRS) if train_dir != folder else None
  class_names = tuple(_class_dirs(train_dir))
  if not class_names:
    raise FolderDatasetError(f'Image folder {train_dir} has no class subfolders; put the images '
                             'of each class into a subfolder named after the class.')
  skipped: list[tuple[str, str]] = []
  train = _scan_classes(train_dir, class_names, skipped, require_all=True)
  if val_dir is not None:
    val = _scan_classes(val_dir, class_names, skipped, require_all=False)
  else:
    if not 0.0 <= val_fraction < 1.0:
      raise FolderDatasetError(f'val_fraction must be in [0, 1), got {val_fraction}; set '
                               'data.val_fraction to the share of images kept for validation.')
    val = {}
    for name, paths in train.items():
      ordered = _hash_order(paths)
      n_val = min(len(ordered) - 1, int(round(val_fraction * len(ordered))))
      val[name], train[name] = ordered[:n_val], ordered[n_val:]
  if skipped:
    examples = '; '.join(f'{p} ({r})' for p, r in skipped[:3])
    warnings.warn(f'{len(skipped)} files in {folder} are not readable images and were skipped, '
                  f'e.g. {examples}.', SkippedFilesWarning, stacklevel=2)
  return FolderIndex(class_names, {'train': _as_split(train, class_names),
                                   'validation': _as_split(val, class_names)}, tuple(skipped))
