"""Tests of alexnet_jax.input_pipeline on the embedded (tiny) dataset and on image folders."""

import io
import json
import os
import warnings

import chex
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from alexnet_jax import augment
from alexnet_jax import data_stats
from alexnet_jax import device_augment
from alexnet_jax import input_pipeline as ip
from alexnet_jax.datasets import folder as folder_lib
from alexnet_jax.datasets import shapes

B = 32  # Global batch size used throughout.


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _config(data_dir, **overrides):
  c = ip.default_data_config()
  c.name = 'alexnet_jax_shapes/tiny'
  c.data_dir = data_dir
  for k, v in overrides.items():
    c[k] = v
  return c


def _inputs(batch):
  """The batch as the network sees it: the device's half of the augmentation applied."""
  out = {k: v for k, v in batch.items() if k in ('label', 'mask')}
  out['image'] = np.asarray(device_augment.network_inputs(batch))
  return out


def _train(config, raw=False, **kwargs):
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  batches = ip.train_batches(config, global_batch_size=kwargs.pop('batch', B), **kwargs)
  return list(batches) if raw else [_inputs(b) for b in batches]


def _eval(config, raw=False, **kwargs):
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  batches = ip.eval_batches(config, global_batch_size=kwargs.pop('batch', B), **kwargs)
  return list(batches) if raw else [_inputs(b) for b in batches]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.fixture(scope='module')
def squares(data_dir):
  """The 256x256 squares of the tiny train split, by label, read straight from TFDS."""
  info = ip.get_dataset_info(_config(data_dir))  # Prepares the dataset on first use.
  assert info.num_train_examples == 200
  builder = tfds.builder('alexnet_jax_shapes/tiny', data_dir=data_dir)
  ds = builder.as_dataset(split='train', decoders={'image': tfds.decode.SkipDecoding()})
  by_label = {}
  for ex in ds:
    by_label.setdefault(int(ex['label']), []).append(
        augment.decode_and_center_square(ex['image']).numpy())
  return {k: np.stack(v) for k, v in by_label.items()}


def test_default_data_config():
  c = ip.default_data_config()
  assert c.source == 'embedded' and c.resize_size == 256 and c.crop_size == 227
  assert c.pca_alpha_std == 0.1 and c.input_scale == 255.0
  np.testing.assert_allclose(c.pca_eigval, shapes.PCA_EIGVAL)  # The default config's.
  assert c.data_dir is None and c.manual_dir is None
  c.data_dir = '/tmp/x'  # Placeholders accept a string.


def test_pipelines_run_without_tf_data_autotuning():
  # Its model thread sleeps between optimisations and an iterator's destructor waits for that
  # sleep: the main job stalled 0-40 s at each epoch's end (seen with gdb in TF 2.21).
  options = ip._options(ip.default_data_config())  # pylint: disable=protected-access
  assert options.autotune.enabled is False and options.deterministic is True


def test_dataset_info_prepares_embedded(squares, data_dir):
  info = ip.get_dataset_info(_config(data_dir))
  assert info == ip.DatasetInfo(10, 200, 60, shapes.CLASS_NAMES)


def test_steps():
  assert ip.steps_per_epoch(200, 32) == 6
  assert ip.eval_steps(60, 32) == 2
  assert ip.eval_steps(61, 32, process_count=2) == 2  # 31 per process in 16s.
  assert ip.eval_steps(64, 32, process_count=2) == 2


def test_train_batch_shapes(squares, data_dir):
  for b in _train(_config(data_dir), raw=True, seed=0, epoch=0):  # What the host ships.
    assert set(b) == {'image', 'label', 'flip', 'pixel_scale', 'pixel_offset'}
    chex.assert_shape([b['image'], b['flip'], b['pixel_scale'], b['pixel_offset']],
                      [(B, 227, 227, 3), (B,), (B,), (B, 3)])
    chex.assert_type([b['image'], b['label'], b['flip'], b['pixel_offset']],
                     [np.uint8, np.int32, bool, np.float32])
  batches = _train(_config(data_dir, mean_rgb=augment.IMAGENET_MEAN_RGB), seed=0, epoch=0)
  assert len(batches) == 6
  for b in batches:
    chex.assert_shape(b['image'], (B, 227, 227, 3))
    chex.assert_type([b['image'], b['label']], [np.float32, np.int32])
    assert 0 <= b['label'].min() and b['label'].max() < 10
  # Raw pixel units minus the mean, plus a small colour shift.
  images = np.concatenate([b['image'] for b in batches])
  assert -140 < images.min() < -100 and 140 < images.max() < 170


def _find_crop(out, candidates):
  """(candidate index, y, x, flipped) such that `out` is exactly that crop, or None."""
  for flipped in (False, True):
    patch = out[:, ::-1] if flipped else out
    for i, src in enumerate(candidates):
      windows = sliding_window_view(src[:32, :32], (3, 3, 3))[:30, :30, 0]  # (30, 30, 3, 3, 3)
      hits = np.argwhere((windows == patch[:3, :3]).all(axis=(2, 3, 4)))
      for y, x in hits:
        if np.array_equal(src[y:y + 227, x:x + 227], patch):
          return i, int(y), int(x), flipped
  return None


def test_train_images_are_crops_and_flips_of_distinct_examples(squares, data_dir):
  config = _config(data_dir, pca_alpha_std=0.0, mean_rgb=(0.0, 0.0, 0.0))
  batches = _train(config, seed=3, epoch=1)
  seen, flips, offsets = set(), [], set()
  for b in batches:
    for image, label in zip(b['image'], b['label']):
      found = _find_crop(image.astype(np.uint8), squares[int(label)])
      assert found is not None, 'a training image is not a 227 crop of its 256 image'
      i, y, x, flipped = found
      assert (int(label), i) not in seen, 'an example was used twice in one epoch'
      seen.add((int(label), i))
      flips.append(flipped)
      offsets.add((y, x))
  assert len(seen) == 6 * B
  assert 0.3 < np.mean(flips) < 0.7
  assert len(offsets) > 100  # Random positions, not the centre.


def test_pca_noise_is_a_per_image_colour_shift(squares, data_dir):
  on = _train(_config(data_dir), seed=5, epoch=0)
  off = _train(_config(data_dir, pca_alpha_std=0.0), seed=5, epoch=0)
  shifts = []
  for a, b in zip(on, off):
    np.testing.assert_array_equal(a['label'], b['label'])  # Same order and crops.
    diff = (a['image'] - b['image']).reshape(B, -1, 3).astype(np.float64)
    np.testing.assert_allclose(diff.std(1), 0, atol=1e-3)  # A constant per image and channel.
    shifts.append(diff.mean(1))
  shifts = np.concatenate(shifts)
  # Covariance of 255 * eigvec @ (alpha * eigval) with alpha ~ N(0, 0.1^2 I).
  v, lam = np.asarray(shapes.PCA_EIGVEC), np.asarray(shapes.PCA_EIGVAL)
  expected = (255 * 0.1) ** 2 * (v * lam**2) @ v.T
  np.testing.assert_allclose(np.cov(shifts.T), expected, atol=0.25 * expected.max())
  assert len({tuple(s.round(4)) for s in shifts}) == len(shifts)  # Fresh for every image.


@pytest.mark.parametrize('cache', [True, False])
def test_determinism_and_resume(squares, data_dir, cache):
  config = _config(data_dir, cache=cache, shuffle_buffer=64)
  first = _train(config, seed=11, epoch=2)
  _assert_same(first, _train(config, seed=11, epoch=2))
  _assert_same(first[4:], _train(config, seed=11, epoch=2, start_step=4))
  assert _train(config, seed=11, epoch=2, start_step=6) == []
  for seed, epoch in ((12, 2), (11, 3)):  # Another seed, another epoch: other batches.
    other = next(ip.train_batches(config, global_batch_size=B, seed=seed, epoch=epoch,
                                  process_index=0, process_count=1))
    assert not np.array_equal(first[0]['label'], other['label'])
    assert not np.allclose(first[0]['image'], other['image'])


def test_train_argument_errors(squares, data_dir):
  with pytest.raises(ValueError, match='start_step'):
    _train(_config(data_dir), seed=0, epoch=0, start_step=7)
  with pytest.raises(ValueError, match='multiple of 3'):
    _train(_config(data_dir), seed=0, epoch=0, batch=32, process_count=3)
  with pytest.raises(ValueError, match='smaller batch'):
    _train(_config(data_dir), seed=0, epoch=0, batch=256)


def _eval_reference(data: bytes, mean_rgb) -> np.ndarray:
  """PIL: shorter side to 256, centre 256, centre 227, minus the mean, 0..255 units."""
  image = Image.open(io.BytesIO(data)).convert('RGB')
  w, h = image.size
  scale = 256 / min(w, h)
  image = image.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.BILINEAR)
  w, h = image.size
  left, top = (w - 256) // 2 + 14, (h - 256) // 2 + 14
  pixels = np.asarray(image, np.float64)[top:top + 227, left:left + 227]
  return pixels - 255 * np.asarray(mean_rgb)


def test_eval_batches_center_and_ten_crop(squares, data_dir):
  config = _config(data_dir)
  batches = _eval(config)
  assert len(batches) == 2  # 60 examples in batches of 32: the second is padded.
  masks = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(masks, np.arange(64) < 60)
  chex.assert_type([batches[0]['image'], batches[0]['label'], masks],
                   [np.float32, np.int32, bool])
  assert (batches[1]['image'][28:] == 0).all() and (batches[1]['label'][28:] == 0).all()
  # Fixed order: the stored order of the validation split; pixels as PIL computes them.
  builder = tfds.builder('alexnet_jax_shapes/tiny', data_dir=data_dir)
  stored = list(builder.as_dataset(split='validation', shuffle_files=False,
                                   decoders={'image': tfds.decode.SkipDecoding()}))
  images = np.concatenate([b['image'] for b in batches])[:60]
  labels = np.concatenate([b['label'] for b in batches])[:60]
  np.testing.assert_array_equal(labels, [int(ex['label']) for ex in stored])
  for i in (0, 31, 59):
    ref = _eval_reference(stored[i]['image'].numpy(), shapes.MEAN_RGB)
    assert np.abs(images[i] - ref).mean() < 2.0

  raw = _eval(config, raw=True, ten_crop=True)
  chex.assert_type(raw[0]['image'], np.uint8)
  chex.assert_shape(raw[0]['image'], (B, 5, 227, 227, 3))  # The device adds the reflections.
  ten = [_inputs(b) for b in raw]
  chex.assert_shape(ten[0]['image'], (B, 10, 227, 227, 3))
  np.testing.assert_array_equal(ten[0]['label'], batches[0]['label'])
  np.testing.assert_array_equal(ten[0]['image'][:, 4], batches[0]['image'])  # Crop 4: centre.
  np.testing.assert_array_equal(ten[0]['image'][:, 5], ten[0]['image'][:, 0, :, ::-1])
  assert not ten[1]['mask'][28:].any()


def test_stats_file_overrides_mean(squares, data_dir, tmp_path):
  path = tmp_path / 'stats.json'
  path.write_text(json.dumps({'mean_rgb': [0.0, 0.0, 0.0], 'pca_eigval': [0, 0, 0],
                              'pca_eigvec': np.eye(3).tolist()}))
  base = _eval(_config(data_dir), batch=60)[0]['image']
  zero = _eval(_config(data_dir, stats_file=str(path)), batch=60)[0]['image']
  np.testing.assert_allclose(zero - base, np.broadcast_to(
      255 * np.asarray(shapes.MEAN_RGB, np.float32), base.shape), atol=1e-3)
  with pytest.raises(FileNotFoundError, match='data_stats'):
    _eval(_config(data_dir, stats_file=str(tmp_path / 'missing.json')))


def _image_ids(batches):
  """A hash per real example (image bytes), in order."""
  out = []
  for b in batches:
    for image, keep in zip(b['image'], b.get('mask', np.ones(len(b['image']), bool))):
      if keep:
        out.append(hash(image.round(2).tobytes()))
  return out


@pytest.mark.parametrize('cache', [True, False])
def test_processes_cover_every_example_once(squares, data_dir, cache):
  config = _config(data_dir, cache=cache)
  single = _image_ids(_eval(config, batch=12))
  assert len(set(single)) == 60
  for count in (2, 7):  # 60 examples: 30 each; 9 or 8 each, padded to batches of 2.
    parts = [_eval(config, batch=12 if count == 2 else 14, process_index=p,
                   process_count=count) for p in range(count)]
    assert len({len(p) for p in parts}) == 1  # Every process runs the same number of steps.
    ids = [i for p in parts for i in _image_ids(p)]
    assert sorted(ids) == sorted(single), count
  # Training: equal step counts; the processes' examples are disjoint and all different.
  config = _config(data_dir, cache=cache, pca_alpha_std=0.0, mean_rgb=(0.0, 0.0, 0.0))
  parts = [_train(config, seed=1, epoch=0, batch=32, process_index=p, process_count=2)
           for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == 6
  used = []
  for part in parts:
    for b in part:
      for image, label in zip(b['image'], b['label']):
        found = _find_crop(image.astype(np.uint8), squares[int(label)])
        used.append((int(label), found[0]))
  assert len(set(used)) == len(used) == 6 * 32


def test_even_slice_matches_tfds(data_dir, squares):
  builder = tfds.builder('alexnet_jax_shapes/tiny', data_dir=data_dir)
  for n_proc in (2, 3, 7):
    sizes = [builder.info.splits[s].num_examples
             for s in tfds.even_splits('validation', n_proc)]
    assert sizes == [len(range(60)[ip.even_slice(60, p, n_proc)]) for p in range(n_proc)]


def test_tfds_source_by_name(squares, data_dir):
  """Any prepared TFDS image classification dataset; here the tiny shapes, by name."""
  c = _config(data_dir, source='tfds', cache=False)
  assert ip.get_dataset_info(c) == ip.DatasetInfo(10, 200, 60, shapes.CLASS_NAMES)
  embedded = _eval(_config(data_dir), batch=60)
  _assert_same(_eval(c, batch=60), embedded)  # The same examples, the same preprocessing.


def test_source_errors(tmp_path):
  c = ip.default_data_config()
  c.source = 'mnist'
  with pytest.raises(ValueError, match='Unknown data source'):
    ip.get_dataset_info(c)
  c = ip.default_data_config()
  c.source, c.name, c.data_dir = 'tfds', 'mnist', str(tmp_path)
  with pytest.raises(FileNotFoundError, match='tfds build mnist'):
    ip.get_dataset_info(c)
  c.name = 'no_such_dataset_xyz'
  with pytest.raises(ValueError, match='no dataset'):
    ip.get_dataset_info(c)
  c = ip.default_data_config()
  c.source, c.data_dir = 'imagenet2012', str(tmp_path)
  with pytest.raises(FileNotFoundError) as e:
    ip.get_dataset_info(c)
  message = str(e.value)
  for part in ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar',
               os.path.join(str(tmp_path), 'downloads', 'manual'),
               'python -m alexnet_jax.input_pipeline --config=alexnet_jax/configs/imagenet.py'):
    assert part in message
  c = ip.default_data_config()
  c.source = 'folder'
  with pytest.raises(ValueError, match='data.folder'):
    ip.get_dataset_info(c)
  c.folder = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    ip.get_dataset_info(c)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------
def _save(path, image: Image.Image, fmt: str, **kwargs):
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, format=fmt, **kwargs)


def _rgb(h, w, colour):
  return Image.fromarray(np.full((h, w, 3), colour, np.uint8))


def _awkward_folder(root):
  """Two classes of awkward-but-valid images plus five broken files."""
  _save(root / 'cat' / 'rgb.jpg', _rgb(300, 400, (200, 30, 30)), 'JPEG')
  _save(root / 'cat' / 'gray.jpg', _rgb(260, 300, (90, 90, 90)).convert('L'), 'JPEG')
  _save(root / 'cat' / 'cmyk.jpg', _rgb(280, 256, (30, 200, 30)).convert('CMYK'), 'JPEG')
  _save(root / 'cat' / 'one.png', _rgb(1, 1, (10, 10, 250)), 'PNG')
  _save(root / 'dog' / 'alpha.png', _rgb(200, 120, (250, 250, 10)).convert('RGBA'), 'PNG')
  _save(root / 'dog' / 'gray_alpha.png', _rgb(64, 64, (128, 128, 128)).convert('LA'), 'PNG')
  _save(root / 'dog' / 'tiny.jpg', _rgb(5, 9, (0, 120, 240)), 'JPEG')
  _save(root / 'dog' / 'palette.gif', _rgb(300, 300, (0, 0, 0)).convert('P'), 'GIF')
  (root / 'dog' / 'empty.jpg').write_bytes(b'')
  (root / 'dog' / 'notes.txt').write_text('not an image')
  good = io.BytesIO()
  _rgb(300, 300, (1, 2, 3)).save(good, format='JPEG')
  (root / 'cat' / 'truncated.jpg').write_bytes(good.getvalue()[:len(good.getvalue()) // 2])
  (root / 'cat' / 'fake.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
  _save(root / 'cat' / 'image.tiff', _rgb(300, 300, (5, 5, 5)), 'TIFF')
  (root / 'cat' / '.DS_Store').write_bytes(b'\0\0\0\1Bud1')  # Hidden: ignored, not counted.


def test_folder_awkward_images(tmp_path):
  root = tmp_path / 'awkward'
  _awkward_folder(root)
  with pytest.warns(folder_lib.SkippedFilesWarning, match='5 files'):
    index = folder_lib.scan_folder(str(root), 0.0)
  assert index.class_names == ('cat', 'dog')
  assert sorted(os.path.basename(p) for p, _ in index.skipped) == [
      'empty.jpg', 'fake.png', 'image.tiff', 'notes.txt', 'truncated.jpg']
  c = ip.default_data_config()
  c.source, c.folder, c.val_fraction = 'folder', str(root), 0.0
  info = ip.get_dataset_info(c)
  assert info == ip.DatasetInfo(2, 8, 0, ('cat', 'dog'))
  batches = _eval(_config(None, source='folder', folder=str(root), val_fraction=0.0,
                          eval_split='train', mean_rgb=(0., 0., 0.)), batch=8)
  (batch,) = batches
  np.testing.assert_array_equal(batch['label'], [0, 0, 0, 0, 1, 1, 1, 1])
  centre = batch['image'][:, 113, 113]  # One pixel per image: the uniform colour, as RGB.
  expected = [(30, 200, 30), (90, 90, 90), (10, 10, 250), (200, 30, 30), (250, 250, 10),
              (128, 128, 128), (0, 0, 0), (0, 120, 240)]  # Sorted file names per class.
  np.testing.assert_allclose(centre, expected, atol=6)
  train = _train(_config(None, source='folder', folder=str(root), val_fraction=0.0),
                 seed=0, epoch=0, batch=4)
  assert len(train) == 2


def test_folder_empty_class_is_an_error(tmp_path):
  root = tmp_path / 'empty_class'
  _save(root / 'a' / 'x.jpg', _rgb(300, 300, (1, 1, 1)), 'JPEG')
  (root / 'b').mkdir()
  with pytest.raises(ValueError, match=r'contains no readable images; add images to it'):
    folder_lib.scan_folder(str(root), 0.1)
  (root / 'b' / 'broken.jpg').write_bytes(b'garbage')
  with pytest.raises(ValueError, match='contains no readable images'), warnings.catch_warnings():
    warnings.simplefilter('ignore')
    folder_lib.scan_folder(str(root), 0.2)  # Another cache key: scanned again.
  with pytest.raises(ValueError, match='no class subfolders'):
    folder_lib.scan_folder(str(tmp_path / 'empty_class' / 'a'), 0.1)


def test_folder_train_val_subfolders(tmp_path):
  root = tmp_path / 'split'
  for split, n in (('train', 5), ('val', 2)):
    for cls, colour in (('x', (255, 0, 0)), ('y', (0, 0, 255))):
      for i in range(n):
        _save(root / split / cls / f'{i}.jpg', _rgb(256, 300, colour), 'JPEG')
  c = _config(None, source='folder', folder=str(root))
  assert ip.get_dataset_info(c) == ip.DatasetInfo(2, 10, 4, ('x', 'y'))
  batch = _eval(c, batch=4)[0]
  np.testing.assert_array_equal(batch['label'], [0, 0, 1, 1])
  (root / 'val' / 'z').mkdir()
  folder_lib.scan_folder.cache_clear()
  with pytest.raises(ValueError, match='no counterpart'):
    ip.get_dataset_info(c)


def test_folder_carved_split_is_deterministic_and_stable(tmp_path):
  root = tmp_path / 'carve'
  for i in range(40):
    _save(root / ('a' if i % 2 else 'b') / f'img{i}.png', _rgb(8, 8, (i, i, i)), 'PNG')
  index = folder_lib.scan_folder(str(root), 0.25)
  val = set(index.splits['validation'].paths)
  assert len(val) == 10 and not val & set(index.splits['train'].paths)
  assert np.bincount(index.splits['validation'].labels).tolist() == [5, 5]  # Per class.
  folder_lib.scan_folder.cache_clear()
  assert set(folder_lib.scan_folder(str(root), 0.25).splits['validation'].paths) == val
  # A new file moves no old file between splits.
  _save(root / 'a' / 'new.png', _rgb(8, 8, (9, 9, 9)), 'PNG')
  folder_lib.scan_folder.cache_clear()
  new_val = set(folder_lib.scan_folder(str(root), 0.25).splits['validation'].paths)
  assert val - new_val == set() or len(val - new_val) <= 1  # Rounding may give a slot away.
  assert new_val - val <= {str(root / 'a' / 'new.png')}


def test_folder_processes_cover_every_example_once(tmp_path):
  root = tmp_path / 'procs'
  for i in range(23):
    _save(root / f'c{i % 3}' / f'{i}.png', _rgb(4, 4, (i * 10, 0, 0)), 'PNG')
  c = _config(None, source='folder', folder=str(root), val_fraction=0.0, eval_split='train',
              mean_rgb=(0., 0., 0.))
  reds = []
  for p in range(2):
    for b in _eval(c, batch=4, process_index=p, process_count=2):
      reds.extend(b['image'][b['mask'], 0, 0, 0].round().astype(int).tolist())
  assert sorted(reds) == [i * 10 for i in range(23)]


def test_tf_never_sees_a_gpu():
  assert not tf.config.get_visible_devices('GPU')


# --------------------------------------------------------------------------------------------
# data_stats
# --------------------------------------------------------------------------------------------
def test_data_stats_against_numpy(tmp_path):
  """Uniform-colour PNGs: the pixel moments are those of the colours, whatever the resizing."""
  rng = np.random.default_rng(0)
  colours = rng.multivariate_normal([120, 100, 80], [[900, 500, 100], [500, 700, 0],
                                                     [100, 0, 300]], size=30)
  colours = colours.clip(0, 255).round().astype(np.uint8)
  root = tmp_path / 'stats_folder'
  for i, colour in enumerate(colours):
    _save(root / f'k{i % 2}' / f'{i}.png', _rgb(20 + i, 30, colour), 'PNG')
  c = _config(None, source='folder', folder=str(root), val_fraction=0.0)
  stats = data_stats.compute_stats(c, num_images=1000)
  assert stats['num_images'] == 30
  ref = colours.astype(np.float64) / 255.0
  np.testing.assert_allclose(stats['mean_rgb'], ref.mean(0), atol=1e-9)
  ref_cov = np.cov(ref.T, bias=True)
  np.testing.assert_allclose(stats['covariance'], ref_cov, atol=1e-9)
  vec, val = np.asarray(stats['pca_eigvec']), np.asarray(stats['pca_eigval'])
  np.testing.assert_allclose(vec @ np.diag(val) @ vec.T, ref_cov, atol=1e-9)
  np.testing.assert_allclose(val, np.sort(np.linalg.eigvalsh(ref_cov))[::-1], atol=1e-9)
  # A sample: a seeded subset, different for another seed.
  part = data_stats.compute_stats(c, num_images=10, seed=1)
  assert part['num_images'] == 10
  assert part['mean_rgb'] != data_stats.compute_stats(c, num_images=10, seed=2)['mean_rgb']
  # Saved beside the workdir, and read back by the pipeline.
  path = data_stats.save_stats(stats, str(tmp_path / 'work'))
  assert path == str(tmp_path / 'work' / 'data_stats.json')
  mean, eigval, eigvec = ip.image_stats(_config(None, stats_file=path))
  np.testing.assert_allclose(mean, stats['mean_rgb'])
  np.testing.assert_allclose(eigval, val)
  np.testing.assert_allclose(eigvec, vec)


def test_data_stats_cli(tmp_path, capsys, data_dir, squares):
  data_stats.main(['--config.data.name=alexnet_jax_shapes/tiny',
                   f'--config.data.data_dir={data_dir}', f'--workdir={tmp_path}',
                   '--num_images=20'])
  assert 'data_stats.json' in capsys.readouterr().out
  stats = json.loads((tmp_path / 'data_stats.json').read_text())
  assert stats['num_images'] == 20
  # Random colours: the mean is mid-grey and no direction dominates as it does in ImageNet.
  np.testing.assert_allclose(stats['mean_rgb'], 0.5, atol=0.1)


def test_epoch_indices_are_one_order_sliced_over_processes():
  single = ip.epoch_indices(103, 12, seed=3, epoch=1)
  assert len(single) == 8 * 12 and len(set(single)) == len(single)
  assert set(single) <= set(range(103))
  for count in (2, 3, 4):
    parts = [ip.epoch_indices(103, 12, seed=3, epoch=1, process_index=p, process_count=count)
             for p in range(count)]
    joined = np.concatenate([part.reshape(8, 12 // count) for part in parts], axis=1)
    np.testing.assert_array_equal(joined.reshape(-1), single)
  assert not np.array_equal(single, ip.epoch_indices(103, 12, seed=3, epoch=2))


def test_global_batches_do_not_depend_on_the_process_count(squares, data_dir):
  """Two processes' parts of each batch, side by side, are the one-process batch, bit for bit."""
  config = _config(data_dir)
  single = _train(config, seed=5, epoch=1, start_step=2)
  parts = [_train(config, seed=5, epoch=1, start_step=2, process_index=p, process_count=2)
           for p in range(2)]
  joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*parts)]
  _assert_same(single, joined)


def test_data_commands_take_the_main_jobs_config_flags(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    data_stats.main(['--config.data.nmae=x', f'--workdir={tmp_path}'])
  assert e.value.code == 2 and 'error: ' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    ip.main(['--config=alexnet_jax/configs/no_such_config.py'])
  assert e.value.code == 2
