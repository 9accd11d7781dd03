"""The logic of experiments/pipeline_speed.py on a tiny setting (no timing is checked)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'experiments'))
import pipeline_speed  # noqa: E402  pylint: disable=g-import-not-at-top

from alexnet_jax import input_pipeline as ip  # noqa: E402


def test_projection_uses_the_measured_scaling():
  rows = [{'cores': 1, 'images_per_cpu_s': 1000.0}, {'cores': 2, 'images_per_cpu_s': 900.0}]
  assert pipeline_speed.projection(rows, 16) == pytest.approx(1000 * 16 * 0.9)
  assert pipeline_speed.projection(rows[:1], 16) == pytest.approx(16000)


def test_photos_are_full_size_jpegs_of_realistic_size():
  image = pipeline_speed.photo_like(0)
  assert image.shape == (375, 500, 3) and image.dtype == np.uint8
  assert image.std() > 30  # not a flat field


def test_tiny_run_of_every_dataset_and_path(tmp_path):
  flags = ['--config.data.name=alexnet_jax_shapes/tiny',
           f'--config.data.data_dir={tmp_path / "tfds"}']
  base = ip.parse_config_flags(flags).config.data
  pipeline_speed.prepare_data(base, str(tmp_path), photos=8)
  results = {}
  for dataset in pipeline_speed.DATASETS:
    for path in pipeline_speed.PATHS:
      config = pipeline_speed.data_config(base, dataset, str(tmp_path))
      r = pipeline_speed.measure(config, path, batches=1, batch_size=4, warmup=1)
      assert r['images_per_s'] > 0 and r['images_per_cpu_s'] > 0
      # The old path ships float32 crops, the new one uint8: 4x fewer bytes.
      assert r['bytes_per_image'] == 227 * 227 * 3 * (4 if path == 'old' else 1)
      results[(dataset, path)] = [{'cores': 1, **r}]
  text = pipeline_speed.table(results, 16)
  assert len(text.splitlines()) == 2 + 6 and '| prepared | new | 1 |' in text
  args = pipeline_speed._parse(['--batches=2', *flags])  # pylint: disable=protected-access
  assert args.config_flags == flags
  args.workdir = str(tmp_path)
  cmd = pipeline_speed._child_command(args, 'photos', 'new', 2)  # pylint: disable=protected-access
  assert '--child=photos,new' in cmd and cmd[-2:] == flags
