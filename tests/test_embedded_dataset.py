"""Tests of the embedded offline dataset (alexnet_jax.datasets.shapes)."""

import tempfile
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.datasets import shapes


def _read_split(builder, split):
  ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  return [(ex['image'].numpy(), int(ex['label'])) for ex in ds]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  builder = tfds.builder(f'{shapes.NAME}/tiny', data_dir=str(tmp_path_factory.mktemp('tfds')))
  builder.download_and_prepare()
  return builder


def test_render_is_deterministic_and_labels_balanced():
  a, label_a = shapes.render('train', 17)
  b, label_b = shapes.render('train', 17)
  np.testing.assert_array_equal(a, b)
  assert label_a == label_b == 7
  c, _ = shapes.render('validation', 17)
  assert a.shape != c.shape or not np.array_equal(a, c)  # Splits are different images.
  labels = [shapes.render('train', i)[1] for i in range(40)]
  np.testing.assert_array_equal(np.bincount(labels), [4] * 10)


def test_image_sizes():
  sizes = np.array([shapes.render('train', i)[0].shape for i in range(60)])
  assert (sizes[:, 2] == 3).all()
  assert (sizes[:, :2].min(1) == 256).all()
  assert sizes[:, :2].max() <= 384
  assert len({tuple(s) for s in sizes}) > 20  # Varied aspect ratios, landscape and portrait.
  assert (sizes[:, 0] > 256).any() and (sizes[:, 1] > 256).any()


def test_mean_colour_does_not_predict_the_class():
  """A nearest-class-mean classifier on colour statistics must stay near chance (10%)."""
  def features(split, n):
    out = []
    for i in range(n):
      pixels, label = shapes.render(split, i)
      centre = pixels[:, (pixels.shape[1] - 256) // 2:][:256, :256].reshape(-1, 3) / 255.0
      out.append((np.concatenate([centre.mean(0), centre.std(0)]), label))
    return np.array([f for f, _ in out]), np.array([l for _, l in out])
  x_train, y_train = features('train', 300)
  x_val, y_val = features('validation', 200)
  means = np.stack([x_train[y_train == c].mean(0) for c in range(10)])
  scale = x_train.std(0)
  dist = (((x_val[:, None] - means[None]) / scale) ** 2).sum(-1)
  accuracy = (dist.argmin(1) == y_val).mean()
  assert accuracy < 0.2, accuracy  # 4.5 binomial sigmas above chance for 200 examples.


def test_shape_is_large_and_inside_the_centre_crop():
  """Most of the object lies in the 227 centre of the 256 centre square, and fills a good part."""
  for i in range(40):
    _, _, mask = shapes.render_with_mask('train', i)
    h, w = mask.shape
    top, left = (h - 256) // 2 + 14, (w - 256) // 2 + 14
    inside = mask[top:top + 227, left:left + 227].sum()
    assert inside >= 0.9 * mask.sum(), i
    assert inside >= 0.08 * 227 * 227, i


def test_shipped_pixel_statistics():
  """The shipped mean and PCA agree with a fresh numpy estimate from rendered images."""
  pixels = []
  for i in range(0, 3000, 25):
    image, _ = shapes.render('train', i)
    h, w = image.shape[:2]
    pixels.append(image[(h - 256) // 2:][:256, (w - 256) // 2:][:, :256].reshape(-1, 3))
  pixels = np.concatenate(pixels).astype(np.float64) / 255.0
  np.testing.assert_allclose(shapes.MEAN_RGB, pixels.mean(0), atol=0.03)
  cov = np.cov(pixels.T)
  vec, val = np.asarray(shapes.PCA_EIGVEC), np.asarray(shapes.PCA_EIGVAL)
  np.testing.assert_allclose(vec.T @ vec, np.eye(3), atol=2e-3)
  np.testing.assert_allclose(val.sum(), np.trace(cov), rtol=0.15)
  np.testing.assert_allclose(vec @ np.diag(val) @ vec.T, cov, atol=0.015)


def test_tiny_builder(tiny):
  info = tiny.info
  assert info.features['label'].num_classes == 10
  assert info.features['label'].names == list(shapes.CLASS_NAMES)
  assert info.splits['train'].num_examples == 200
  assert info.splits['validation'].num_examples == 60
  train = _read_split(tiny, 'train')
  assert sorted(label for _, label in train) == sorted(i % 10 for i in range(200))
  for data, _ in train[:10]:
    assert tf.io.is_jpeg(data)  # Stored as JPEG: the ImageNet decode path applies.
  # Stored bytes are exactly the renderer's JPEG of some example with that label.
  stored = {data for data, _ in train}
  for i in (0, 13, 199):
    assert shapes.encode_jpeg(shapes.render('train', i)[0]) in stored


def test_sample_grid():
  grid = shapes.sample_grid(per_class=2, thumb=32)
  assert grid.size == (80 + 2 * 36, 10 * 36)
  pixels = np.asarray(grid)
  assert pixels.std() > 20  # Not blank.


@pytest.mark.slow
def test_default_config_prepares_in_under_a_minute(tmp_path):
  builder = tfds.builder(shapes.NAME, data_dir=str(tmp_path))
  # CPU time of this process, not wall time: a busy machine must not fail the test. Drawing
  # and encoding run in this one thread, so on an idle machine the two are about equal.
  start = time.process_time()
  builder.download_and_prepare()
  elapsed = time.process_time() - start
  assert builder.info.splits['train'].num_examples == 3000
  assert builder.info.splits['validation'].num_examples == 500
  assert elapsed < 60, f'preparing took {elapsed:.0f} s of CPU'


def test_a_builder_for_an_unprepared_data_dir_leaves_no_temporary_folder(tmp_path, monkeypatch):
  scratch = tmp_path / 'scratch'
  scratch.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(scratch))  # where mkdtemp puts its folders
  builder = tfds.builder(f'{shapes.NAME}/tiny', data_dir=str(tmp_path / 'tfds'))
  assert not builder.info.splits  # nothing prepared: the info comes from the code
  assert list(scratch.iterdir()) == []
