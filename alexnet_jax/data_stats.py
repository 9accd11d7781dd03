"""The training set's pixel statistics: per-channel mean and the RGB covariance's eigensystem.

The paper subtracts the mean activity of the training set from every pixel and draws its colour
noise along the principal components of the RGB values of all training pixels. This module
estimates both from a seeded sample of training images, each seen exactly as the network sees
it before augmentation (the central square rescaled to 256x256), in [0, 1] pixel units::

    python -m alexnet_jax.data_stats --source=folder --folder=~/my_images --workdir=/tmp/run
    # writes /tmp/run/data_stats.json; use it with --config.data.stats_file=/tmp/run/data_stats.json

The JSON holds ``mean_rgb`` (3), ``pca_eigval`` (3, descending) and ``pca_eigvec`` (3x3, the
eigenvectors as columns; the sign of each column is arbitrary and does not matter, since the
colour noise is symmetric), the same layout as ImageNet's defaults in ``alexnet_jax.augment``,
plus ``num_images`` and ``covariance``.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import tensorflow as tf

from alexnet_jax import augment
from alexnet_jax import input_pipeline

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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  input_pipeline.add_source_flags(parser)
  parser.add_argument('--train_split', default='train')
  parser.add_argument('--workdir', required=True, help='where data_stats.json goes')
  parser.add_argument('--num_images', type=int, default=1000)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  config = input_pipeline.config_from_flags(args)
  config.train_split = args.train_split
  stats = compute_stats(config, args.num_images, args.seed)
  path = save_stats(stats, args.workdir)
  print(json.dumps({k: stats[k] for k in ('mean_rgb', 'pca_eigval', 'pca_eigvec', 'num_images')},
                   indent=2))
  print(f'wrote {path}; use it with data.stats_file={path}')


if __name__ == '__main__':
  main()
