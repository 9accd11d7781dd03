"""Photos from disk to a network's input: find them, decode, resize, crop (NumPy and Pillow).

For prediction on a user's files, outside the training input pipeline (no TensorFlow, so a
command that classifies a few photos starts in seconds). The steps follow the published models:

1. :func:`find_images`: files as given, and the image files under each folder, recursively.
2. :func:`load_rgb`: any format Pillow reads, EXIF rotation applied, as uint8 RGB.
3. :func:`resize`: the shorter side to ``size`` keeping the aspect ratio (torchvision; for the
   centre crop this is also the paper's "central 256x256 of the image rescaled to 256"), or
   both sides to ``size`` x ``size`` (``warp=True``: Caffe, whose published numbers use images
   warped to 256x256). Bilinear with Pillow's antialiasing, as torchvision's ``Resize`` on
   Pillow images.
4. :func:`center_crop` or :func:`ten_crops` (the four corners and the centre, then their
   mirror images: the paper's test patches, in the order of ``augment.ten_crop_images``).

The result is uint8 pixels; the preset's normalisation (``model.preprocess``) comes after.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from PIL import Image
from PIL import ImageOps

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm',
                  '.pgm', '.pbm')


def find_images(paths: Iterable[str]) -> list[str]:
  """The files of ``paths``: a file as given, a folder's image files (by suffix) recursively.

  Folders are walked in sorted order and hidden entries (starting with '.') are skipped. A path
  that does not exist raises ``FileNotFoundError`` naming it.
  """
  files = []
  for path in paths:
    if os.path.isdir(path):
      for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        files.extend(os.path.join(root, n) for n in sorted(names)
                     if not n.startswith('.') and n.lower().endswith(IMAGE_SUFFIXES))
    elif os.path.exists(path):
      files.append(path)
    else:
      raise FileNotFoundError(f'{path} does not exist; pass image files or folders of them.')
  return files


def load_rgb(path: str) -> np.ndarray:
  """``path`` decoded to uint8 ``(H, W, 3)`` RGB (grayscale, palette, CMYK, alpha converted).

  Raises ``OSError`` (or ``ValueError``) for a file that is not a readable image.
  """
  with Image.open(path) as image:
    image = ImageOps.exif_transpose(image)  # photos from phones are stored rotated
    return np.asarray(image.convert('RGB'), dtype=np.uint8)


def resize(image: np.ndarray, size: int, warp: bool = False) -> np.ndarray:
  """The shorter side to ``size`` (aspect kept), or both sides (``warp``); bilinear, uint8."""
  height, width = image.shape[:2]
  if warp:
    new_height, new_width = size, size
  elif height <= width:  # torchvision's rounding: the longer side is truncated
    new_height, new_width = size, int(size * width / height)
  else:
    new_height, new_width = int(size * height / width), size
  if (new_height, new_width) == (height, width):
    return image
  resized = Image.fromarray(image).resize((new_width, new_height), Image.Resampling.BILINEAR)
  return np.asarray(resized, dtype=np.uint8)


def _crop_offsets(height: int, width: int, size: int) -> list[tuple[int, int]]:
  """(top, left) of the four corner crops and the centre crop (torchvision's rounding)."""
  if size > height or size > width:
    raise ValueError(f'a {size}x{size} crop does not fit a {height}x{width} image.')
  bottom, right = height - size, width - size
  centre = (int(round(bottom / 2.0)), int(round(right / 2.0)))
  return [(0, 0), (0, right), (bottom, 0), (bottom, right), centre]


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central ``size`` x ``size`` patch."""
  top, left = _crop_offsets(image.shape[0], image.shape[1], size)[4]
  return image[top:top + size, left:left + size]


def ten_crops(image: np.ndarray, size: int) -> np.ndarray:
  """``(10, size, size, 3)``: top-left, top-right, bottom-left, bottom-right, centre, then the
  same five flipped left-right."""
  patches = np.stack([image[t:t + size, l:l + size]
                      for t, l in _crop_offsets(image.shape[0], image.shape[1], size)])
  return np.concatenate([patches, patches[:, :, ::-1]], axis=0)


def prepare(path: str, resize_size: int, crop_size: int, warp: bool = False,
            ten_crop: bool = False) -> np.ndarray:
  """One file as uint8 ``(crop, crop, 3)`` (or ``(10, crop, crop, 3)`` with ``ten_crop``)."""
  image = resize(load_rgb(path), resize_size, warp)
  return ten_crops(image, crop_size) if ten_crop else center_crop(image, crop_size)
