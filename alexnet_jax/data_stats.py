"""The training set's pixel statistics: per-channel mean and the RGB covariance's eigensystem.

The paper subtracts the mean activity of the training set from every pixel and draws its colour
noise along the principal components of the RGB values of all training pixels. This module
estimates both from a seeded sample of training images, each seen exactly as the network sees
it before augmentation (the central square rescaled to 256x256), in [0, 1] pixel units::

    python -m alexnet_jax.data_stats --config=alexnet_jax/configs/folder.py \
        --config.data.folder=~/my_images --workdir=/tmp/run
    # writes /tmp/run/data_stats.json; use it with --config.data.stats_file=/tmp/run/data_stats.json

It takes the same ``--config`` flags as the main job (default: the default config).

The JSON holds ``mean_rgb`` (3), ``pca_eigval`` (3, descending) and ``pca_eigvec`` (3x3, the
eigenvectors as columns; the sign of each column is arbitrary and does not matter, since the
colour noise is symmetric), the same layout as ImageNet's defaults in ``alexnet_jax.augment``,
plus ``num_images`` and ``covariance``.
"""

from __future__ import annotations

import json
import os

import numpy as np
from alexnet_jax import augment
from alexnet_jax import input_pipeline
from alexnet_jax.host_tf import tf

STATS_FILENAME = 'data_stats.json'


def eigen_from_moments(count: int, pixel_sum: np.ndarray,
                       outer_sum: np.ndarray) -> dict[str, np.ndarray]:
  """Mean, covariance and its eigensystem (eigenvalues descending) from pixel moments."""
  mean = pixel_sum / count
  cov = outer_sum / count - np.outer(mean, mean)
  eigval, eigvec = np.linalg.eigh((cov + cov.T) / 2)
  order = np.argsort(eigval)[::-1]
  return {'mean_rgb': mean, 'covariance': cov, 'pca_eigval': np.maximum(eigval[order], 0.0),
          'pca_eigvec': eigvec[:, order]}


def compute_stats(data_config, num_images: int = 1000, seed: int = 0,
                  batch_size: int = 64) -> dict:
  """Pixel statistics of ``num_images`` training images drawn with ``seed`` (all if fewer).

  Moments are accumulated in float64 over every pixel of every sampled 256x256 image.
  """
  if num_images <= 0:
    raise ValueError(f'num_images must be positive, got {num_images}; ask for at least one.')
  resize = int(data_config.resize_size)
  ds = input_pipeline.encoded_examples(data_config, data_config.train_split, shuffle_seed=seed)
  ds = ds.take(num_images).map(
      tf.autograph.experimental.do_not_convert(
          lambda data, label: augment.decode_and_center_square(data, resize)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  count, pixel_sum, outer_sum = 0, np.zeros(3), np.zeros((3, 3))
  num_seen = 0
  for batch in ds.batch(batch_size).as_numpy_iterator():
    pixels = batch.reshape(-1, 3).astype(np.float64) / 255.0
    count += len(pixels)
    pixel_sum += pixels.sum(0)
    outer_sum += pixels.T @ pixels
    num_seen += len(batch)
  if not count:
    raise ValueError('The training split is empty; point the data config at a dataset with '
                     'training images.')
  stats = eigen_from_moments(count, pixel_sum, outer_sum)
  stats = {k: v.tolist() for k, v in stats.items()}
  stats['num_images'] = num_seen
  return stats


def save_stats(stats: dict, workdir: str) -> str:
  """Writes ``stats`` to ``<workdir>/data_stats.json`` and returns the path."""
  workdir = os.path.expanduser(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, STATS_FILENAME)
  with open(path, 'w') as f:
    json.dump(stats, f, indent=2)
  return path


def _define_flags(values) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'where data_stats.json goes', flag_values=values)
  flags.mark_flag_as_required('workdir', flag_values=values)
  flags.DEFINE_integer('num_images', 1000, 'training images to sample', flag_values=values)
  flags.DEFINE_integer('seed', 0, 'which images', flag_values=values)


def main(argv=None):
  """``python -m alexnet_jax.data_stats --config=... [--config.data.*=...] --workdir=W``."""
  flags = input_pipeline.parse_config_flags(argv, _define_flags, __doc__.split('\n\n')[0])
  stats = compute_stats(flags.config.data, flags.num_images, flags.seed)
  path = save_stats(stats, flags.workdir)
  print(json.dumps({k: stats[k] for k in ('mean_rgb', 'pca_eigval', 'pca_eigvec', 'num_images')},
                   indent=2))
  print(f'wrote {path}; use it with --config.data.stats_file={path}')


if __name__ == '__main__':
  main()
