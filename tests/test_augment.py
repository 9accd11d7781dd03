"""Tests of alexnet_jax.augment against numpy / PIL references."""

import io

import chex
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_jax import augment

MEAN = augment.IMAGENET_MEAN_RGB
EIGVAL = augment.IMAGENET_PCA_EIGVAL
EIGVEC = augment.IMAGENET_PCA_EIGVEC


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def _smooth_rgb(height: int, width: int) -> np.ndarray:
  """A smooth colour image: resampling kernels agree on it to about one grey level."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float64)
  r = 127.5 + 100 * np.sin(y / height * 3.0)
  g = 127.5 + 100 * np.cos(x / width * 2.5)
  b = 60 + 150 * (x + y) / (height + width)
  return np.clip(np.stack([r, g, b], -1), 0, 255).round().astype(np.uint8)


def _reference_square(pixels: np.ndarray, size: int = 256) -> np.ndarray:
  """PIL: rescale so the shorter side is `size`, then crop the central size x size."""
  h, w = pixels.shape[:2]
  scale = size / min(h, w)
  new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
  resized = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.BILINEAR),
                       np.float64)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return resized[top:top + size, left:left + size]


@pytest.mark.parametrize('height,width', [(256, 256), (300, 256), (256, 384), (500, 333),
                                          (97, 130), (1, 1)])
def test_central_square_window(height, width):
  y, x, side = augment.central_square_window(height, width)
  assert side == min(height, width)
  # The square is centred: equal margins, up to one pixel on the far side.
  assert 0 <= (height - side) - 2 * y <= 1 and 0 <= (width - side) - 2 * x <= 1
  ty, tx, tside = augment.central_square_window(tf.constant(height), tf.constant(width))
  assert (int(ty), int(tx), int(tside)) == (y, x, side)


def _bilinear_warp(pixels: np.ndarray, size: int) -> np.ndarray:
  """float64 numpy: plain bilinear resampling to size x size, pixel centres aligned (as
  OpenCV's INTER_LINEAR, Caffe's resize), no antialiasing."""
  def taps(n_in):
    src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    return lo, np.minimum(lo + 1, n_in - 1), src - lo
  y0, y1, fy = taps(pixels.shape[0])
  x0, x1, fx = taps(pixels.shape[1])
  p = pixels.astype(np.float64)
  rows = p[y0] * (1 - fy)[:, None, None] + p[y1] * fy[:, None, None]
  return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


@pytest.mark.parametrize('height,width', [(256, 384), (400, 300), (130, 97)])
def test_decode_and_warp_resizes_the_whole_image_like_caffe(height, width):
  pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
  out = augment.decode_and_resize(_encode(Image.fromarray(pixels), 'PNG'), 256,
                                  warp=True).numpy()
  chex.assert_shape(out, (256, 256, 3))
  np.testing.assert_allclose(out, _bilinear_warp(pixels, 256), atol=0.5 + 1e-3)


@pytest.mark.parametrize('height,width', [(256, 384), (400, 300), (130, 97)])
def test_decode_and_center_square_matches_resize_then_crop(height, width):
  pixels = _smooth_rgb(height, width)
  out = augment.decode_and_center_square(_encode(Image.fromarray(pixels), 'PNG')).numpy()
  chex.assert_shape(out, (256, 256, 3))
  assert out.dtype == np.uint8
  ref = _reference_square(pixels)
  # Different resampling kernels and the sub-pixel offset of crop-then-rescale: a few levels.
  assert np.abs(out.astype(np.float64) - ref).mean() < 1.5
  assert np.abs(out.astype(np.float64) - ref).max() <= 8


def test_fused_jpeg_path_equals_full_decode_then_crop():
  pixels = _smooth_rgb(300, 420)
  data = _encode(Image.fromarray(pixels), 'JPEG', quality=95)
  full = tf.io.decode_jpeg(data, channels=3)
  y, x, side = augment.central_square_window(300, 420)
  square = full[y:y + side, x:x + side]
  ref = tf.cast(tf.round(tf.image.resize(square, [256, 256], antialias=True)), tf.uint8)
  out = augment.decode_and_center_square(data)
  # Chroma upsampling at the crop border may differ by a level.
  assert np.abs(out.numpy().astype(int) - ref.numpy().astype(int)).max() <= 2


@pytest.mark.parametrize('mode,fmt', [('L', 'JPEG'), ('CMYK', 'JPEG'), ('RGBA', 'PNG'),
                                      ('LA', 'PNG'), ('P', 'PNG'), ('RGB', 'GIF'),
                                      ('RGB', 'BMP'), ('I;16', 'PNG')])
def test_any_colour_mode_comes_out_rgb(mode, fmt):
  rgb = np.zeros((40, 60, 3), np.uint8)
  rgb[:] = (200, 40, 90)
  if mode == 'I;16':
    image = Image.fromarray(np.full((40, 60), 150 * 257, np.uint16))
    expected = np.array([150, 150, 150])
  else:
    image = Image.fromarray(rgb).convert(mode)
    # The mean over the central square: palette conversion dithers single pixels.
    expected = np.asarray(image.convert('RGB'))[:, 10:50].reshape(-1, 3).mean(0)
  out = augment.decode_and_center_square(_encode(image, fmt)).numpy()
  chex.assert_shape(out, (256, 256, 3))
  np.testing.assert_allclose(out.reshape(-1, 3).mean(0), expected, atol=3)


@pytest.mark.parametrize('height,width', [(1, 1), (3, 7), (20, 10)])
def test_tiny_images_are_upscaled(height, width):
  pixels = np.full((height, width, 3), (10, 120, 250), np.uint8)
  for fmt in ('JPEG', 'PNG'):
    out = augment.decode_and_center_square(_encode(Image.fromarray(pixels), fmt)).numpy()
    chex.assert_shape(out, (256, 256, 3))
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), (10, 120, 250), atol=4)


def test_example_key_is_a_pure_function_of_its_inputs():
  key = augment.example_key(3, 1, 7).numpy()
  np.testing.assert_array_equal(key, augment.example_key(3, 1, 7).numpy())
  others = [augment.example_key(*a).numpy() for a in [(4, 1, 7), (3, 2, 7), (3, 1, 8)]]
  for other in others:
    assert not np.array_equal(key, other)


def _draw_params(n: int, **kwargs) -> dict[str, np.ndarray]:
  ds = tf.data.Dataset.range(n).map(
      lambda i: augment.augment_params(augment.example_key(0, 0, i), **kwargs))
  return next(iter(ds.batch(n))).copy()


def test_augment_params_distribution():
  n = 6000
  p = {k: v.numpy() for k, v in _draw_params(n).items()}
  for axis in ('offset_y', 'offset_x'):
    counts = np.bincount(p[axis], minlength=31)
    assert counts[30] == 0 and p[axis].min() == 0  # 30 positions: 0..29.
    # Uniform: chi-square with 29 dof; 70 is far beyond its 99.99% quantile (~62).
    expected = n / 30
    assert ((counts[:30] - expected) ** 2 / expected).sum() < 70
  assert abs(p['flip'].mean() - 0.5) < 0.03
  chex.assert_shape(p['alpha'], (n, 3))
  np.testing.assert_allclose(p['alpha'].std(0), 0.1, rtol=0.06)
  np.testing.assert_allclose(p['alpha'].mean(0), 0.0, atol=0.006)
  # The three alphas and the crop axes are drawn independently.
  corr = np.corrcoef(np.concatenate([p['alpha'].T, p['offset_y'][None], p['offset_x'][None]]))
  assert np.abs(corr - np.eye(5)).max() < 0.06


def test_augment_params_rejects_crop_larger_than_image():
  with pytest.raises(ValueError, match='crop_size'):
    augment.augment_params(augment.example_key(0, 0, 0), image_size=200, crop_size=227)


def test_pca_shift_matches_numpy():
  alpha = np.array([0.13, -0.05, 0.21])
  expected = np.asarray(EIGVEC, np.float64) @ (alpha * np.asarray(EIGVAL, np.float64))
  np.testing.assert_allclose(augment.pca_shift(alpha, EIGVAL, EIGVEC).numpy(), expected,
                             rtol=1e-6)
  # The published eigenvectors are the columns and are orthonormal (to their 4 printed digits).
  v = np.asarray(EIGVEC)
  np.testing.assert_allclose(v.T @ v, np.eye(3), atol=2e-3)


def test_train_image_matches_numpy_reference():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
  seen_flips = set()
  for index in range(12):
    key = augment.example_key(5, 2, index)
    p = {k: v.numpy() for k, v in augment.augment_params(key).items()}
    out = augment.train_image(tf.constant(image), key, mean_rgb=MEAN, pca_eigval=EIGVAL,
                              pca_eigvec=EIGVEC).numpy()
    y, x = int(p['offset_y']), int(p['offset_x'])
    ref = image[y:y + 227, x:x + 227].astype(np.float64)
    if p['flip']:
      ref = ref[:, ::-1]
    seen_flips.add(bool(p['flip']))
    shift = np.asarray(EIGVEC) @ (p['alpha'].astype(np.float64) * np.asarray(EIGVAL))
    ref = (ref / 255.0 - np.asarray(MEAN) + shift) * 255.0
    chex.assert_shape(out, (227, 227, 3))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=2e-3)
  assert seen_flips == {True, False}


def test_center_crop_matches_numpy():
  image = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
  out = augment.center_crop_image(tf.constant(image), mean_rgb=MEAN, input_scale=1.0).numpy()
  ref = image[14:241, 14:241] / 255.0 - np.asarray(MEAN)
  np.testing.assert_allclose(out, ref, atol=1e-6)


def test_ten_crop_layout_matches_numpy():
  image = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
  out = augment.ten_crop_images(tf.constant(image), mean_rgb=(0., 0., 0.),
                                input_scale=255.0).numpy()
  chex.assert_shape(out, (10, 227, 227, 3))
  corners = [image[:227, :227], image[:227, 29:], image[29:, :227], image[29:, 29:],
             image[14:241, 14:241]]
  refs = corners + [c[:, ::-1] for c in corners]
  for i, ref in enumerate(refs):
    np.testing.assert_allclose(out[i], ref.astype(np.float32), atol=1e-4, err_msg=f'crop {i}')


def test_normalize_units():
  image = tf.constant(np.full((2, 2, 3), 255, np.uint8))
  out = augment.normalize(image, (0.5, 0.25, 0.0), tf.constant([0.1, 0.0, -0.1]), 255.0)
  np.testing.assert_allclose(out.numpy()[0, 0], np.array([0.6, 0.75, 0.9]) * 255.0, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# The host/device split: uint8 crops on the host, flip and colour on the device
# --------------------------------------------------------------------------------------------
def _photo_jpeg(height: int, width: int, seed: int = 0) -> bytes:
  """A photo-like JPEG (smooth colour plus sensor-like noise), quality 90."""
  noise = np.random.default_rng(seed).normal(0, 12, (height, width, 3))
  pixels = np.clip(_smooth_rgb(height, width) + noise, 0, 255).astype(np.uint8)
  return _encode(Image.fromarray(pixels), 'JPEG', quality=90)


@pytest.mark.parametrize('height,width', [(256, 256), (256, 341), (375, 500), (640, 480),
                                          (200, 180)])
def test_decode_square_crop_equals_the_crop_of_the_whole_square(height, width):
  data = _photo_jpeg(height, width)
  square = augment.decode_and_center_square(data).numpy().astype(int)
  for y, x in ((0, 0), (29, 29), (14, 3), (7, 22)):
    got = augment.decode_square_crop(data, y, x).numpy()
    chex.assert_type(got, np.uint8)
    diff = np.abs(got.astype(int) - square[y:y + 227, x:x + 227])
    if min(height, width) == 256:  # Prepared data: nothing rescaled, the crop is exact.
      assert diff.max() == 0
    else:  # The same kernel and coordinates; float rounding may land a .5 the other way.
      assert diff.max() <= 1 and diff.mean() < 1e-3, (diff.max(), diff.mean())


def test_device_augmentation_equals_the_host_side_one():
  """Same keys: the same crops, flips and colour shifts as ``train_image`` (fp32 rounding).

  A 256-pixel image (prepared data), whose crops are exact (the test above bounds the others).
  """
  from alexnet_jax import device_augment  # pylint: disable=g-import-not-at-top
  data = _photo_jpeg(256, 341, seed=3)
  square = augment.decode_and_center_square(data)
  stats = dict(mean_rgb=MEAN, pca_eigval=EIGVAL, pca_eigvec=EIGVEC)
  keys = [augment.example_key(7, 1, index) for index in range(16)]
  host = np.stack([augment.train_image(square, k, **stats).numpy() for k in keys])
  examples = [augment.train_crop(data, k, **stats) for k in keys]
  batch = {name: np.stack([e[name].numpy() for e in examples]) for name in examples[0]}
  assert batch['image'].dtype == np.uint8 and 0 < batch['flip'].mean() < 1
  device = np.asarray(device_augment.network_inputs(batch))
  np.testing.assert_allclose(device, host, rtol=0, atol=1e-3)
  # Evaluation: the centre crop, and the ten patches from five uint8 ones.
  centre = device_augment.network_inputs(
      {k: v.numpy()[None] for k, v in augment.eval_crops(data, mean_rgb=MEAN).items()})
  np.testing.assert_allclose(centre[0], augment.center_crop_image(square, mean_rgb=MEAN),
                             atol=1e-3)
  five = {k: v.numpy()[None] for k, v in augment.eval_crops(data, mean_rgb=MEAN, five=True).items()}
  chex.assert_shape(five['image'], (1, 5, 227, 227, 3))
  np.testing.assert_allclose(device_augment.network_inputs(five)[0],
                             augment.ten_crop_images(square, mean_rgb=MEAN), atol=1e-3)


# A preset's preprocessing in float64, written out here (test_presets checks model.preprocess
# against the same numbers): 0..255 pixels -> network inputs.
_PRESET_REFERENCE = {
    'bvlc': lambda x: x - np.array([122.679, 116.669, 104.007]),
    'torchvision': lambda x: (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225]),
}


@pytest.mark.parametrize('name,crop_size', [('bvlc', 227), ('torchvision', 224)])
def test_device_inputs_under_a_preset_and_warp(name, crop_size):
  """``data.preprocess`` and ``data.warp`` on the uint8 pipeline: the device computes
  ``preprocess(crop + 255 * pca_shift)`` from per-channel scale and offset, of crops of the
  whole image warped to 256x256; train, centre crop and the ten patches."""
  from alexnet_jax import device_augment  # pylint: disable=g-import-not-at-top
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  data = _photo_jpeg(300, 420, seed=5)
  warped = augment.decode_and_warp(data).numpy().astype(np.float64)
  preprocess = _PRESET_REFERENCE[name]
  opts = dict(crop_size=crop_size, affine=model_lib.preprocess_affine(name), warp=True)
  keys = [augment.example_key(3, 0, index) for index in range(8)]
  examples = [augment.train_crop(data, k, mean_rgb=MEAN, pca_eigval=EIGVAL, pca_eigvec=EIGVEC,
                                 **opts) for k in keys]
  batch = {k: np.stack([e[k].numpy() for e in examples]) for k in examples[0]}
  chex.assert_shape([batch['pixel_scale'], batch['pixel_offset']], (8, 3))
  got = np.asarray(device_augment.network_inputs(batch))
  for key, out in zip(keys, got):
    p = {k: v.numpy() for k, v in augment.augment_params(key, 256, crop_size).items()}
    y, x = int(p['offset_y']), int(p['offset_x'])
    ref = warped[y:y + crop_size, x:x + crop_size]
    ref = ref[:, ::-1] if p['flip'] else ref
    shift = np.asarray(EIGVEC) @ (p['alpha'].astype(np.float64) * np.asarray(EIGVAL))
    np.testing.assert_allclose(out, preprocess(ref + 255.0 * shift), rtol=1e-5, atol=1e-3)
  mid = (256 - crop_size) // 2
  centre = {k: v.numpy()[None] for k, v in augment.eval_crops(data, mean_rgb=MEAN, **opts).items()}
  np.testing.assert_allclose(device_augment.network_inputs(centre)[0],
                             preprocess(warped[mid:mid + crop_size, mid:mid + crop_size]),
                             rtol=1e-5, atol=1e-3)
  five = {k: v.numpy()[None]
          for k, v in augment.eval_crops(data, mean_rgb=MEAN, five=True, **opts).items()}
  patches = [warped[y:y + crop_size, x:x + crop_size]
             for y, x in augment.ten_crop_offsets(256, crop_size)]
  want = preprocess(np.stack(patches + [p[:, ::-1] for p in patches]))
  np.testing.assert_allclose(device_augment.network_inputs(five)[0], want, rtol=1e-5, atol=1e-3)
