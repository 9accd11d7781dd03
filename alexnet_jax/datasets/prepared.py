"""The paper's offline preparation: a copy of a dataset at 256 pixels, read at random.

The paper stored ImageNet at 256x256 and augmented on the fly. This module does the same once,
for any source of the input pipeline (ImageNet through TFDS, an image folder, the embedded set)::

    python -m alexnet_jax.datasets.prepared --config=alexnet_jax/configs/imagenet.py \
        --config.data.data_dir=D --out=/data/imagenet_256 [--quality=90] [--shape=square]
    python -m alexnet_jax.main --config=alexnet_jax/configs/imagenet.py \
        --config.data.prepared_dir=/data/imagenet_256 ...

Each image of the config's train and eval splits is decoded, cut to its central square and
rescaled to 256x256 exactly as training would (``--shape=square``, the paper's form; or
``--shape=shorter_side``: the shorter side at 256, the aspect kept) and re-encoded as a JPEG at
``--quality``. Training then decodes only the 227 window it crops and rescales nothing.

Why quality 90 by default (measured on 256x256 squares, docs/input_pipeline.md): re-encoding at
90 keeps a PSNR of 35-37 dB to the decoded original (95: 36-38.5 dB; 85: 34.5-35 dB), below the
originals' own JPEG and sensor noise, while 95 costs 1.45-1.55x the bytes of 90 for about one dB.
At ~17 kB an image a prepared ImageNet train split is ~22 GB, so a host's page cache holds a
large part of it; decoding time grows with the bytes, so smaller files also decode faster.

Format: ArrayRecord files (``<split>.array_record-NNNNN-of-MMMMM``, one JPEG per record, grouped
one record per chunk so any record is one seek away), ``<split>.labels.npy`` (int32, the labels
in record order) and ``prepared.json`` (split sizes, file names, class names, how it was made).
Random access lets every process read any example, so the one data order of the input pipeline
(``input_pipeline.epoch_indices``) holds on any number of processes; the shards only keep files
of a manageable size.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import numpy as np

INFO_FILE = 'prepared.json'
SHAPES = ('square', 'shorter_side')
DEFAULT_QUALITY = 90
EXAMPLES_PER_SHARD = 10_000  # ~250 MB of 256x256 JPEGs at quality 90


@dataclasses.dataclass(frozen=True)
class PreparedSplit:
  """One split of a prepared copy: random access to its encoded images, and its labels."""
  records: object  # ArrayRecordDataSource: records[i] / records.__getitems__(indices) -> bytes
  labels: np.ndarray  # int32, record order


def read_info(prepared_dir: str) -> dict:
  """``prepared.json`` of a prepared copy (FileNotFoundError says how to make one)."""
  path = os.path.join(os.path.expanduser(prepared_dir), INFO_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{prepared_dir} holds no prepared copy ({INFO_FILE} is missing); make one with python -m '
        'alexnet_jax.datasets.prepared --config=<the config> --out=' + str(prepared_dir))
  with open(path) as f:
    return json.load(f)


@functools.lru_cache(maxsize=8)
def open_split(prepared_dir: str, split: str) -> PreparedSplit:
  """Random access to ``split`` of the copy in ``prepared_dir``."""
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  prepared_dir = os.path.expanduser(prepared_dir)
  info = read_info(prepared_dir)
  if split not in info['splits']:
    raise ValueError(f'The prepared copy in {prepared_dir} has the splits '
                   f'{", ".join(info["splits"])}, not {split!r}; set data.train_split / '
                   'data.eval_split to one of them.')
  entry = info['splits'][split]
  records = array_record_data_source.ArrayRecordDataSource(
      [os.path.join(prepared_dir, name) for name in entry['files']])
  labels = np.load(os.path.join(prepared_dir, entry['labels']))
  return PreparedSplit(records, labels.astype(np.int32))


def shard_names(split: str, num_examples: int,
                examples_per_shard: int = EXAMPLES_PER_SHARD) -> list[str]:
  count = max(1, math.ceil(num_examples / examples_per_shard))
  return [f'{split}.array_record-{i:05d}-of-{count:05d}' for i in range(count)]


def write_split(out_dir: str, split: str, examples, num_examples: int,
                examples_per_shard: int = EXAMPLES_PER_SHARD) -> dict:
  """Writes ``num_examples`` (encoded image, label) pairs of ``examples`` as one split, streaming
  (one shard open at a time); returns the split's ``prepared.json`` entry."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  names = shard_names(split, num_examples, examples_per_shard)
  labels, writer = [], None
  for i, (data, label) in enumerate(examples):
    if i % examples_per_shard == 0:
      if writer is not None:
        writer.close()
      # group_size:1: each record is its own chunk, so reading one decompresses only it.
      writer = array_record_module.ArrayRecordWriter(
          os.path.join(out_dir, names[i // examples_per_shard]), 'group_size:1')
    writer.write(data)
    labels.append(label)
  if writer is not None:
    writer.close()
  if len(labels) != num_examples:
    raise RuntimeError(f'{split}: wrote {len(labels)} examples, expected {num_examples}.')
  labels_name = f'{split}.labels.npy'
  np.save(os.path.join(out_dir, labels_name), np.asarray(labels, np.int32))
  return {'num_examples': num_examples, 'files': names, 'labels': labels_name}


def reencode(image_bytes, *, resize_size: int, quality: int, shape: str):
  """One image as the copy stores it: JPEG at ``quality``, 256 square or shorter side 256."""
  from alexnet_jax import augment  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from alexnet_jax.host_tf import tf  # pylint: disable=g-import-not-at-top
  if shape == 'square':
    image = augment.decode_and_center_square(image_bytes, resize_size)
  else:
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    new = tf.cast(tf.round(size * resize_size / tf.reduce_min(size)), tf.int32)
    image = tf.image.resize(image, tf.maximum(new, resize_size), antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
  return tf.io.encode_jpeg(image, quality=quality, chroma_downsampling=True)


def prepare_copy(data_config, out_dir: str, *, quality: int = DEFAULT_QUALITY,
                 shape: str = 'square',
                 examples_per_shard: int = EXAMPLES_PER_SHARD) -> dict:
  """Writes the prepared copy of ``data_config``'s train and eval splits; returns its info."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (no cycle)
  from alexnet_jax.host_tf import tf  # pylint: disable=g-import-not-at-top
  if shape not in SHAPES:
    raise ValueError(f'shape must be one of {", ".join(SHAPES)}, not {shape!r}.')
  if not 1 <= quality <= 100:
    raise ValueError(f'JPEG quality must be in 1..100, not {quality}.')
  info = input_pipeline.get_dataset_info(data_config)
  out_dir = os.path.expanduser(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  resize = int(data_config.resize_size)
  convert = tf.autograph.experimental.do_not_convert(
      lambda data, label: (reencode(data, resize_size=resize, quality=quality, shape=shape),
                           label))
  splits = {}
  sizes = {data_config.train_split: info.num_train_examples,
           data_config.eval_split: info.num_eval_examples}
  for split, num_examples in sizes.items():
    ds = input_pipeline.encoded_examples(data_config, split)  # stored order, every example
    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    splits[split] = write_split(out_dir, split, ds.as_numpy_iterator(), num_examples,
                                examples_per_shard)
  result = {'splits': splits, 'class_names': list(info.class_names or []),
            'num_classes': info.num_classes, 'resize_size': resize, 'shape': shape,
            'quality': quality, 'made_from': {'source': data_config.source,
                                              'name': data_config.name}}
  with open(os.path.join(out_dir, INFO_FILE), 'w') as f:
    json.dump(result, f, indent=2)
  return result


def _define_flags(values) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('out', None, 'directory of the prepared copy', flag_values=values)
  flags.mark_flag_as_required('out', flag_values=values)
  flags.DEFINE_integer('quality', DEFAULT_QUALITY, 'JPEG quality', flag_values=values)
  flags.DEFINE_enum('shape', 'square', SHAPES, '256x256 centre (the paper) or shorter side 256',
                    flag_values=values)
  flags.DEFINE_integer('examples_per_shard', EXAMPLES_PER_SHARD, 'records per ArrayRecord file',
                       flag_values=values)


def main(argv=None):
  """``python -m alexnet_jax.datasets.prepared --config=... --out=DIR``."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  flags = input_pipeline.parse_config_flags(argv, _define_flags, __doc__.split('\n\n')[0])
  info = prepare_copy(flags.config.data, flags.out, quality=flags.quality, shape=flags.shape,
                      examples_per_shard=flags.examples_per_shard)
  sizes = ', '.join(f'{k}: {v["num_examples"]}' for k, v in info['splits'].items())
  print(f'wrote {flags.out} ({sizes}); train on it with --config.data.prepared_dir={flags.out}')


if __name__ == '__main__':
  main()
