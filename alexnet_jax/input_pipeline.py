"""Datasets -> ``tf.data`` -> host batches of the paper's inputs, ready to shard over devices.

Sources (``data_config.source``):

* ``'embedded'`` (default): ``alexnet_jax_shapes``, drawn by ``alexnet_jax.datasets.shapes``
  and prepared into ``data_dir`` on first use (about half a minute).
* ``'imagenet2012'``: TFDS's ``imagenet2012``, prepared from the user's
  ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` in ``manual_dir`` with
  ``python -m alexnet_jax.input_pipeline --config=alexnet_jax/configs/imagenet.py
  --config.data.data_dir=... --config.data.manual_dir=...``.
* ``'tfds'``: any TFDS image classification dataset (features ``image`` and ``label``) already
  prepared in ``data_dir``, by ``name``; the class count comes from its info.
* ``'folder'``: a folder of class subfolders of images (``alexnet_jax.datasets.folder``).

With ``data.prepared_dir`` set, training and evaluation read that prepared copy (256x256 JPEGs
in ArrayRecord, ``alexnet_jax.datasets.prepared``) instead of the source.

The host's share of the paper's preprocessing (``alexnet_jax.augment``): decode and crop. Training
draws each example's 227 window, flip and colour noise from its stateless key and ships the
window as uint8 (only that window of the rescaled central 256x256 square is decoded and
rescaled), with the flip and the colour offset; evaluation ships the centre crop or the five
test patches as uint8. The device flips, adds the colour and removes the mean inside the jitted
step (``alexnet_jax.device_augment``). ``data.preprocess`` (a preset's name) makes that last
step the preset's per-channel preprocessing (``model.preprocess_affine``); ``data.warp``
resizes the whole image to ``resize_size`` squared (Caffe's) before cropping, decoding it whole.

Determinism, for any number of processes. Each epoch is one permutation of the split, keyed by
``(seed, epoch)``; global batch k is its k-th slice and each process reads its equal part of that
slice (:func:`epoch_indices`). Every crop, flip and colour shift is keyed by ``(seed, epoch,
index)`` where ``index`` is the example's own index in the split. So 1, 2 or N processes (and a
resume on another count) draw the same global batches and the same augmentation, and
``start_step=k`` starts an epoch at its k-th batch without reading or decoding the skipped
examples.

Two ways of reading. Random access (every process holds the whole split's index): with
``cache=True`` (the default, for datasets that fit in memory like the embedded one) the split's
*encoded* bytes are loaded once; image folders read files by path. Streamed TFDS sources
(``cache=False`` or a split too large for memory) cannot seek: each process streams its own
``tfds.even_splits`` part through a seeded shuffle buffer, and there the order depends on the
process count. Evaluation reads each process's contiguous part of the split in stored order.

Batches have a fixed global size: training drops the remainder (every process yields
``steps_per_epoch`` batches), evaluation pads the last batches and marks real examples in
``mask``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator

import ml_collections
import numpy as np
import psutil
from alexnet_jax.host_tf import tf  # first: TF must never take an accelerator from JAX
import tensorflow_datasets as tfds  # pylint: disable=g-bad-import-order

from alexnet_jax import augment
from alexnet_jax.datasets import folder as folder_lib
from alexnet_jax.datasets import prepared as prepared_lib
from alexnet_jax.datasets import shapes

SOURCES = ('embedded', 'tfds', 'imagenet2012', 'folder')
IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
# A cached split may take at most this share of the available memory.
_MAX_CACHE_SHARE = 0.25
# Map functions here have no Python control flow on tensors: tracing them as they are skips
# AutoGraph's source conversion (and the temporary files it writes).
_plain = tf.autograph.experimental.do_not_convert


class DataConfigError(ValueError):
  """A data config value is invalid; the message says which value to change."""


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not where the config says; the message says how to get it there."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  class_names: tuple[str, ...] | None


def default_data_config() -> ml_collections.ConfigDict:
  """The data section of the default config (``configs/default.py``: the embedded dataset and its
  statistics); ``configs/imagenet.py`` documents every field."""
  from alexnet_jax.configs import default  # pylint: disable=g-import-not-at-top  (no cycle)
  return default.get_config().data


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Training batches per epoch: the remainder is dropped."""
  return num_examples // global_batch_size


def eval_steps(num_examples: int, global_batch_size: int, process_count: int = 1) -> int:
  """Eval batches per pass: enough for the largest process part, the rest padded."""
  local_batch = global_batch_size // process_count
  return math.ceil(math.ceil(num_examples / process_count) / local_batch)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
def _data_dir(data_config) -> str | None:
  return os.path.expanduser(data_config.data_dir) if data_config.data_dir else None


def _embedded_name(data_config) -> str:
  name = data_config.name or shapes.NAME
  if name.split('/')[0] != shapes.NAME:
    raise DataConfigError(f"The embedded source is {shapes.NAME!r}, not {name!r}; leave data.name "
                          f"empty, or use source='tfds' for other datasets.")
  return name


def _manual_dir(data_config) -> str:
  if data_config.manual_dir:
    return os.path.expanduser(data_config.manual_dir)
  data_dir = _data_dir(data_config) or tfds.core.constants.DATA_DIR
  return os.path.join(os.path.expanduser(data_dir), 'downloads', 'manual')


def _prepare_command(data_config) -> str:
  data_dir = _data_dir(data_config) or tfds.core.constants.DATA_DIR
  return (f'python -m alexnet_jax.input_pipeline --config=alexnet_jax/configs/imagenet.py '
          f'--config.data.data_dir={data_dir} --config.data.manual_dir={_manual_dir(data_config)}')


def _tfds_builder(data_config, prepare_embedded: bool = True) -> tfds.core.DatasetBuilder:
  """The TFDS builder of a 'tfds', 'imagenet2012' or 'embedded' config, checked to be ready."""
  source = data_config.source
  data_dir = _data_dir(data_config)
  if source == 'embedded':
    builder = tfds.builder(_embedded_name(data_config), data_dir=data_dir)
    if not builder.is_prepared() and prepare_embedded:
      builder.download_and_prepare()
    return builder
  if source == 'imagenet2012':
    builder = tfds.builder('imagenet2012', data_dir=data_dir)
    if not builder.is_prepared():
      manual_dir = _manual_dir(data_config)
      missing = [t for t in IMAGENET_TARS if not os.path.exists(os.path.join(manual_dir, t))]
      if missing:
        raise DatasetNotFoundError(
            f'ImageNet is not prepared: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar '
            f'(from image-net.org) into {manual_dir}, then run: {_prepare_command(data_config)}')
      raise DatasetNotFoundError(
          f'ImageNet is not prepared yet (the tars are in {manual_dir}); run once: '
          f'{_prepare_command(data_config)}')
    return builder
  # source == 'tfds'
  if not data_config.name:
    raise DataConfigError("source='tfds' needs a dataset name; set data.name (e.g. 'imagenette').")
  try:
    builder = tfds.builder(data_config.name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataConfigError(f'TFDS has no dataset {data_config.name!r}; set data.name to a TFDS '
                          f'dataset name (see tfds.list_builders()).') from e
  if not builder.is_prepared():
    where = data_dir or tfds.core.constants.DATA_DIR
    raise DatasetNotFoundError(
        f'TFDS dataset {data_config.name!r} is not prepared in {where}; prepare it first with: '
        f'tfds build {data_config.name} --data_dir={where}')
  features = builder.info.features
  if ('image' not in features or 'label' not in features
      or not isinstance(features['label'], tfds.features.ClassLabel)):
    raise DataConfigError(f'TFDS dataset {data_config.name!r} has no image and class-label '
                          'features; choose an image classification dataset for data.name.')
  return builder


def _check_source(data_config):
  if data_config.source not in SOURCES:
    raise DataConfigError(f'Unknown data source {data_config.source!r}; set data.source to one '
                          f'of {", ".join(SOURCES)}.')
  if data_config.source == 'folder' and not data_config.folder:
    raise DataConfigError("source='folder' needs a path; set data.folder to a directory of class "
                          'subfolders of images.')


def _folder_split(data_config, split: str) -> folder_lib.FolderSplit:
  index = folder_lib.scan_folder(os.path.expanduser(data_config.folder),
                                 float(data_config.val_fraction))
  key = {'train': 'train', 'val': 'validation', 'validation': 'validation'}.get(split)
  if key is None:
    raise DataConfigError(f'An image folder has the splits train and validation, not {split!r}; '
                          'set data.train_split / data.eval_split accordingly.')
  return index.splits[key]


def _split_size(builder, split: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise DataConfigError(f'Dataset {builder.info.full_name} has no split {split!r} (it has '
                          f'{", ".join(builder.info.splits)}); set data.train_split / '
                          'data.eval_split to one of them.') from e


def get_dataset_info(data_config) -> DatasetInfo:
  """Classes and split sizes; prepares the embedded dataset on first use."""
  _check_source(data_config)
  if data_config.prepared_dir:
    info = prepared_lib.read_info(data_config.prepared_dir)
    return DatasetInfo(info['num_classes'], _split_count(data_config, data_config.train_split),
                       _split_count(data_config, data_config.eval_split),
                       tuple(info['class_names']) or None)
  if data_config.source == 'folder':
    index = folder_lib.scan_folder(os.path.expanduser(data_config.folder),
                                   float(data_config.val_fraction))
    return DatasetInfo(len(index.class_names),
                       len(_folder_split(data_config, data_config.train_split).labels),
                       len(_folder_split(data_config, data_config.eval_split).labels),
                       index.class_names)
  builder = _tfds_builder(data_config)
  label = builder.info.features['label']
  return DatasetInfo(label.num_classes, _split_size(builder, data_config.train_split),
                     _split_size(builder, data_config.eval_split), tuple(label.names))


def prepare(data_config) -> None:
  """Prepares the configured dataset: builds the embedded one, or ImageNet from its tars."""
  _check_source(data_config)
  if data_config.source == 'imagenet2012':
    builder = tfds.builder('imagenet2012', data_dir=_data_dir(data_config))
    manual_dir = _manual_dir(data_config)
    missing = [t for t in IMAGENET_TARS if not os.path.exists(os.path.join(manual_dir, t))]
    if missing and not builder.is_prepared():
      raise DatasetNotFoundError(
          f'Put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) into '
          f'{manual_dir}; {", ".join(missing)} missing.')
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  elif data_config.source == 'tfds':
    tfds.builder(data_config.name, data_dir=_data_dir(data_config)).download_and_prepare()
  elif data_config.source == 'embedded':
    _tfds_builder(data_config)
  else:
    get_dataset_info(data_config)  # Scans the folder and reports skipped files.


# --------------------------------------------------------------------------------------------
# Statistics, options
# --------------------------------------------------------------------------------------------
def image_stats(data_config) -> tuple[tuple, tuple, tuple]:
  """``(mean_rgb, pca_eigval, pca_eigvec)``: from ``stats_file`` if set, else the config's."""
  if data_config.stats_file:
    path = os.path.expanduser(data_config.stats_file)
    if not os.path.exists(path):
      raise DatasetNotFoundError(f'Stats file {path} does not exist; compute it with python -m '
                                 'alexnet_jax.data_stats or clear data.stats_file.')
    with open(path) as f:
      stats = json.load(f)
    return tuple(stats['mean_rgb']), tuple(stats['pca_eigval']), tuple(
        tuple(row) for row in stats['pca_eigvec'])
  return (tuple(data_config.mean_rgb), tuple(data_config.pca_eigval),
          tuple(tuple(row) for row in data_config.pca_eigvec))


def _preset_affine(data_config) -> tuple[np.ndarray, np.ndarray] | None:
  """``data.preprocess``'s per-channel ``(scale, offset)`` (``model.preprocess_affine``), which
  replaces ``mean_rgb`` and ``input_scale`` in the pixels the device makes; None without it.

  The one definition of a preset's normalisation (Caffe's mean pixel, torchvision's mean and
  std) serves prediction, evaluation and fine-tuning alike.
  """
  name = data_config.preprocess
  if not name:
    return None
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  if name not in model_lib.PRESETS:
    raise DataConfigError(f'data.preprocess is {name!r}; set it to one of '
                          f'{", ".join(model_lib.PRESETS)} or to \'\' (the run\'s mean_rgb).')
  return model_lib.preprocess_affine(name)


def _options(data_config) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  if data_config.threadpool_size > 0:
    options.threading.private_threadpool_size = data_config.threadpool_size
  # One thread per map call: the parallelism comes from parallel calls, not from inside ops.
  options.threading.max_intra_op_parallelism = 1
  # No autotuning: its model thread sleeps between optimisations (for tens of seconds) and an
  # iterator's destructor waits for that sleep to end, which stalled every epoch's end by 0-40 s
  # (TF 2.21). Without it an AUTOTUNE map runs as many calls as the thread pool has threads.
  options.autotune.enabled = False
  return options


def _parallel(data_config) -> int:
  n = data_config.num_parallel_calls
  return tf.data.AUTOTUNE if n is None or n < 0 else max(1, n)


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (only when the caller did not say)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count}); pass the '
                     'index of this process among process_count processes.')
  return process_index, process_count


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise DataConfigError(f'Global batch size {global_batch_size} does not split evenly over '
                          f'{process_count} processes; use a positive multiple of {process_count}.')
  return global_batch_size // process_count


def even_slice(num_examples: int, process_index: int, process_count: int) -> slice:
  """The contiguous part of ``num_examples`` that a process reads (as ``tfds.even_splits``)."""
  base, extra = divmod(num_examples, process_count)
  start = process_index * base + min(process_index, extra)
  return slice(start, start + base + (process_index < extra))


# --------------------------------------------------------------------------------------------
# Reading: a process's part of a split, cached in memory or streamed
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Table:
  """A whole split with random access, in stored order: labels in memory, and the encoded images
  in memory (``keys``), as file paths (``keys``, ``are_paths``) or in ArrayRecord (``records``)."""
  keys: np.ndarray | None  # object array of bytes (encoded images) or str (paths).
  labels: np.ndarray  # int32
  are_paths: bool
  records: object = None  # a prepared copy's ArrayRecordDataSource, when keys is None


@functools.lru_cache(maxsize=8)
def _cached_tfds_table(builder_name: str, data_dir: str | None, split: str) -> _Table:
  builder = tfds.builder(builder_name, data_dir=data_dir)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()},
                          read_config=tfds.ReadConfig(try_autocache=False))
  keys, labels = [], []
  pairs = ds.map(_plain(lambda ex: (ex['image'], ex['label'])))
  for batch in pairs.batch(1024).as_numpy_iterator():
    keys.extend(batch[0])
    labels.extend(batch[1])
  return _Table(np.array(keys, dtype=object), np.array(labels, np.int32), False)


def _builder_name(builder) -> str:
  config = builder.builder_config.name if builder.builder_config else None
  return f'{builder.name}/{config}' if config else builder.name


def _process_split(split: str, process_index: int, process_count: int):
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


def _fits_in_memory(builder, split: str) -> bool:
  try:
    num_bytes = builder.info.splits[split].num_bytes
  except (KeyError, ValueError, AttributeError):  # A composite split: let the user decide.
    return True
  return num_bytes <= _MAX_CACHE_SHARE * psutil.virtual_memory().available


def _table(data_config, split) -> _Table | None:
  """The whole of ``split`` as a table (every process holds all of it), or None to stream it."""
  if data_config.prepared_dir:
    part = prepared_lib.open_split(os.path.expanduser(data_config.prepared_dir), split)
    return _Table(None, part.labels, False, part.records)
  if data_config.source == 'folder':
    part = _folder_split(data_config, split)
    return _Table(part.paths, part.labels, True)
  if not data_config.cache:
    return None
  builder = _tfds_builder(data_config)
  if not _fits_in_memory(builder, split):
    warnings.warn(f'Split {split!r} of {builder.info.full_name} is too large to cache in memory; '
                  'streaming it instead (set data.cache=False to silence this).')
    return None
  return _cached_tfds_table(_builder_name(builder), _data_dir(data_config), split)


def _streamed(data_config, split, process_index, process_count, *, shuffle_seed=None):
  """(encoded image, label) pairs of the process's part of ``split``, read by TFDS."""
  builder = _tfds_builder(data_config)
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False,
                                options=_options(data_config))
  ds = builder.as_dataset(split=_process_split(split, process_index, process_count),
                          shuffle_files=shuffle_seed is not None,
                          decoders={'image': tfds.decode.SkipDecoding()},
                          read_config=read_config)
  return ds.map(_plain(lambda ex: (ex['image'], tf.cast(ex['label'], tf.int32))))


def _encoded(key: tf.Tensor, are_paths: bool) -> tf.Tensor:
  return tf.io.read_file(key) if are_paths else key


_RECORDS_PER_READ = 32  # a prepared copy's records fetched per Python call


def _indexed(table: _Table, indices: np.ndarray, data_config) -> tf.data.Dataset:
  """(index, encoded image or path, label) of ``table``'s examples ``indices``, in that order."""
  indices = np.asarray(indices, np.int64)
  if table.records is None:
    # Object arrays keep each byte string whole (a fixed-width 'S' array would pad them).
    return tf.data.Dataset.from_tensor_slices(
        (indices, table.keys[indices], table.labels[indices]))

  def read(chunk):  # ArrayRecord reads run in C++, in parallel over the files of a chunk
    return np.array(table.records.__getitems__(chunk.tolist()), dtype=object)

  @_plain
  def fetch(chunk, labels):
    data = tf.numpy_function(read, [chunk], tf.string, stateful=False)
    return chunk, tf.ensure_shape(data, chunk.shape), labels

  ds = tf.data.Dataset.from_tensor_slices((indices, table.labels[indices]))
  ds = ds.batch(_RECORDS_PER_READ).map(fetch, num_parallel_calls=_parallel(data_config),
                                       deterministic=True)
  return ds.unbatch()


def encoded_examples(data_config, split: str, *, shuffle_seed: int | None = None,
                     process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
  """(encoded image bytes, int32 label) of a process's part of ``split``, before any decoding.

  In stored order, or shuffled by ``shuffle_seed`` (a full permutation for cached and folder
  sources; seeded file order plus a ``shuffle_buffer`` otherwise). For tools such as
  ``alexnet_jax.data_stats``; training uses :func:`train_batches`.
  """
  _check_source(data_config)
  table = _table(data_config, split)
  if table is None:
    ds = _streamed(data_config, split, process_index, process_count,
                   shuffle_seed=None if shuffle_seed is None else shuffle_seed % 2**31)
    if shuffle_seed is not None:
      ds = ds.shuffle(data_config.shuffle_buffer, seed=shuffle_seed)
    return ds
  order = np.arange(len(table.labels))[even_slice(len(table.labels), process_index,
                                                  process_count)]
  if shuffle_seed is not None:
    order = np.random.default_rng(shuffle_seed).permutation(order)
  return _indexed(table, order, data_config).map(
      _plain(lambda _, key, label: (_encoded(key, table.are_paths), label)))


def _split_count(data_config, split: str) -> int:
  if data_config.prepared_dir:
    return len(prepared_lib.open_split(os.path.expanduser(data_config.prepared_dir),
                                       split).labels)
  if data_config.source == 'folder':
    return len(_folder_split(data_config, split).labels)
  return _split_size(_tfds_builder(data_config), split)


def _epoch_seed(seed: int, epoch: int) -> int:
  """A 63-bit seed for the example order of (seed, epoch)."""
  return int(np.random.SeedSequence([seed % 2**32, epoch % 2**32, 0x0A1E]).generate_state(
      2, np.uint32).astype(np.uint64).dot([1 << 31, 1]))


def epoch_indices(num_examples: int, global_batch_size: int, *, seed: int, epoch: int,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """The split indices this process reads in epoch ``epoch``, batch after batch.

  The epoch is one permutation of the split, keyed by ``(seed, epoch)`` alone; global batch k is
  its k-th slice of ``global_batch_size`` and process p reads the p-th of that slice's
  ``process_count`` equal parts. So the global batches (and, keyed by these indices, every crop)
  do not depend on the number of processes. Returns int64 (steps * global_batch / P,).
  """
  steps = steps_per_epoch(num_examples, global_batch_size)
  order = np.random.default_rng(_epoch_seed(seed, epoch)).permutation(num_examples)
  local = global_batch_size // process_count
  return order[:steps * global_batch_size].reshape(steps, process_count, local)[
      :, process_index].reshape(-1).astype(np.int64)


def _train_examples(data_config, split, indices_fn, first: int, count: int, process_index: int,
                    process_count: int, order_seed: int) -> tuple[tf.data.Dataset, bool]:
  """(key index, encoded image or path, label) of this process's training examples, in order.

  Random access (tables): the examples ``indices_fn()`` names, from the ``first``-th on, keyed
  by their index in the split. Streamed TFDS sources cannot seek: each process streams its own
  ``even_splits`` part through a seeded shuffle buffer, keyed by stream position (so there the
  order depends on the process count; prepare such a dataset as ArrayRecord to avoid it).
  """
  table = _table(data_config, split)
  if table is not None:
    return _indexed(table, indices_fn()[first:first + count], data_config), table.are_paths
  ds = _streamed(data_config, split, process_index, process_count,
                 shuffle_seed=order_seed % 2**31)
  ds = ds.shuffle(data_config.shuffle_buffer, seed=order_seed, reshuffle_each_iteration=False)
  ds = ds.enumerate().skip(first).take(count)  # Skip before the decoding map.
  return ds.map(_plain(lambda i, ex: (i * process_count + process_index, ex[0], ex[1]))), False


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------
def train_batches(data_config, *, global_batch_size: int, seed: int, epoch: int,
                  start_step: int = 0, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[dict]:
  """One epoch of training batches for this process, starting at batch ``start_step``.

  Yields ``{'image': uint8 (B/P, crop, crop, 3), 'label': int32 (B/P,), 'flip': bool (B/P,),
  'pixel_scale': float32 (B/P,) or, with ``data.preprocess``, (B/P, 3), 'pixel_offset': float32
  (B/P, 3)}`` (the device makes the network's inputs from them: ``alexnet_jax.device_augment``),
  exactly ``steps_per_epoch(num_train_examples, global_batch_size) - start_step`` of them on every
  process. Same ``(seed, epoch)``: same global batches, whatever ``start_step`` the epoch started
  at and however many processes share them (:func:`epoch_indices`).
  """
  _check_source(data_config)
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch(global_batch_size, process_count)
  split = data_config.train_split
  num_examples = _split_count(data_config, split)
  steps = steps_per_epoch(num_examples, global_batch_size)
  if steps == 0:
    raise DataConfigError(f'The global batch size {global_batch_size} exceeds the {num_examples} '
                          'training examples; use a smaller batch size.')
  if not 0 <= start_step <= steps:
    raise ValueError(f'start_step {start_step} is outside the epoch of {steps} steps; pass a step '
                     f'in [0, {steps}].')
  indices_fn = lambda: epoch_indices(num_examples, global_batch_size, seed=seed, epoch=epoch,
                                     process_index=process_index, process_count=process_count)
  ds, are_paths = _train_examples(data_config, split, indices_fn, start_step * local_batch,
                                  (steps - start_step) * local_batch, process_index,
                                  process_count, _epoch_seed(seed, epoch))

  mean_rgb, eigval, eigvec = image_stats(data_config)
  affine = _preset_affine(data_config)
  resize, crop = int(data_config.resize_size), int(data_config.crop_size)
  warp = bool(data_config.warp)

  @_plain
  def preprocess(index, key, label):
    example = augment.train_crop(
        _encoded(key, are_paths), augment.example_key(seed, epoch, index), mean_rgb=mean_rgb,
        pca_eigval=eigval, pca_eigvec=eigvec, pca_alpha_std=data_config.pca_alpha_std,
        crop_size=crop, resize_size=resize, input_scale=data_config.input_scale,
        affine=affine, warp=warp)
    return {**example, 'label': tf.cast(label, tf.int32)}

  ds = ds.map(preprocess, num_parallel_calls=_parallel(data_config), deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(data_config.prefetch).with_options(_options(data_config))
  return ds.as_numpy_iterator()


def _eval_examples(data_config, split, process_index, process_count):
  """(encoded image or path, label) of this process's contiguous part of ``split``."""
  table = _table(data_config, split)
  if table is None:
    return _streamed(data_config, split, process_index, process_count), False
  part = np.arange(len(table.labels))[even_slice(len(table.labels), process_index,
                                                 process_count)]
  return _indexed(table, part, data_config).map(_plain(lambda _, key, label: (key, label))), \
      table.are_paths


def eval_batches(data_config, *, global_batch_size: int, ten_crop: bool = False,
                 process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict]:
  """The eval split once, in a fixed order, for this process; the remainder padded.

  Yields ``{'image': uint8 (B/P, crop, crop, 3) or the five test patches (B/P, 5, crop, crop,
  3), 'label': int32, 'mask': bool, 'pixel_scale', 'pixel_offset'}`` (``mask`` is False on
  padding; ``alexnet_jax.device_augment`` adds the patches' reflections and removes the mean;
  the pixel fields as in :func:`train_batches`), ``eval_steps(num_eval_examples,
  global_batch_size, process_count)`` batches on every process.
  """
  _check_source(data_config)
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch(global_batch_size, process_count)
  split = data_config.eval_split
  num_examples = _split_count(data_config, split)
  steps = eval_steps(num_examples, global_batch_size, process_count)
  sl = even_slice(num_examples, process_index, process_count)
  local_count = sl.stop - sl.start
  ds, are_paths = _eval_examples(data_config, split, process_index, process_count)

  mean_rgb, _, _ = image_stats(data_config)
  resize, crop = int(data_config.resize_size), int(data_config.crop_size)
  affine = _preset_affine(data_config)
  warp = bool(data_config.warp)

  @_plain
  def preprocess(key, label):
    example = augment.eval_crops(_encoded(key, are_paths), mean_rgb=mean_rgb, five=ten_crop,
                                 crop_size=crop, resize_size=resize,
                                 input_scale=data_config.input_scale, affine=affine, warp=warp)
    return {**example, 'label': tf.cast(label, tf.int32), 'mask': tf.constant(True)}

  ds = ds.map(preprocess, num_parallel_calls=_parallel(data_config), deterministic=True)
  pad = {k: tf.zeros(v.shape, v.dtype) for k, v in ds.element_spec.items()}
  padding = tf.data.Dataset.from_tensors({**pad, 'mask': tf.constant(False)}).repeat(
      steps * local_batch - local_count)
  ds = ds.concatenate(padding).batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(data_config.prefetch).with_options(_options(data_config))
  return ds.as_numpy_iterator()


# --------------------------------------------------------------------------------------------
# Command line: prepare a dataset
# --------------------------------------------------------------------------------------------
_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'default.py')


def parse_config_flags(argv, define_flags=None, description: str = ''):
  """absl flags of a data command line: ``--config`` and its ``--config.*`` overrides exactly as
  the main job takes them, plus the command's own (``define_flags(flag_values)``).

  A flag error ends the command with ``error: ...`` (exit 2). Returns the parsed FlagValues.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
  values = flags.FlagValues()
  if define_flags is not None:
    define_flags(values)
  try:
    # sys_argv: config_flags reads the --config.* overrides there when it defines them; a
    # misspelt field raises KeyError/AttributeError from the config (what the main job reads).
    config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'A config file (ml_collections).',
                                    flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    values.config.get('seed')  # the file loads lazily: make it load (and fail) here
  except (flags.Error, KeyError, AttributeError, ValueError, OSError) as e:
    sys.stderr.write(f'{description}\nerror: {e}; see --helpfull and the config files in '
                     'alexnet_jax/configs/.\n')
    sys.exit(2)
  return values


def main(argv=None):
  """``python -m alexnet_jax.input_pipeline --config=alexnet_jax/configs/imagenet.py
  --config.data.data_dir=D --config.data.manual_dir=M``: prepares the config's dataset."""
  config = parse_config_flags(argv, description='Prepares the dataset of a config.').config
  prepare(config.data)
  print(get_dataset_info(config.data))


if __name__ == '__main__':
  main()
