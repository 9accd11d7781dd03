"""The paper's image preprocessing and augmentation as TensorFlow ops on one image.

Everything here works on a single example inside a ``tf.data`` map (see ``input_pipeline``):

1. :func:`decode_and_center_square`: encoded bytes -> the central square of the image, rescaled
   to ``resize_size`` x ``resize_size`` (256: "rescale so the shorter side is 256, crop the central
   256x256"). JPEGs are decoded and cropped in one fused op (``decode_and_crop_jpeg``) so that
   pixels outside the square are never materialised; PNG, GIF, BMP and WebP go through
   ``decode_image``. Grayscale, CMYK and alpha images come out RGB; small images are upscaled.
2. Train (:func:`train_image`): a random ``crop_size`` (227) patch, a random horizontal flip and
   the paper's PCA colour noise ``eigvec @ (alpha * eigval)``, ``alpha ~ N(0, pca_alpha_std)``.
3. Eval: the centre patch (:func:`center_crop_image`) or the paper's ten patches, four corners
   and centre and their reflections (:func:`ten_crop_images`).
4. :func:`normalize`: ``(pixels / 255 - mean_rgb + shift) * input_scale``, i.e. with the default
   ``input_scale=255`` raw 0..255 pixel units minus the training set's mean, as in the paper.

All randomness is stateless: :func:`example_key` derives a key from ``(seed, epoch, index)`` and
:func:`augment_params` draws the crop offsets, flip and PCA alphas from it, so any example of any
epoch can be reproduced on its own (and a run can resume mid-epoch).

Numbers: ``mean_rgb``, ``pca_eigval`` and ``pca_eigvec`` are in [0, 1] pixel units; eigenvectors
are the *columns* of ``pca_eigvec`` (the layout fb.resnet.torch published ImageNet's with).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alexnet_jax.datasets import imagenet_stats
from alexnet_jax.host_tf import tf

# ImageNet's statistics ([0, 1] pixel units): the defaults of the functions below.
IMAGENET_MEAN_RGB = imagenet_stats.MEAN_RGB
IMAGENET_PCA_EIGVAL = imagenet_stats.PCA_EIGVAL
IMAGENET_PCA_EIGVEC = imagenet_stats.PCA_EIGVEC

RESIZE_SIZE = 256
CROP_SIZE = 227
NUM_TEN_CROPS = 10


# --------------------------------------------------------------------------------------------
# Decoding: bytes -> central square at resize_size
# --------------------------------------------------------------------------------------------
def central_square_window(height, width):
  """``(offset_y, offset_x, side)`` of the central square of a ``height`` x ``width`` image.

  Works on Python ints and on scalar tensors alike. Rescaling this square to 256x256 is the
  paper's "rescale the shorter side to 256, then crop the central 256x256" done in the other
  order, so that a JPEG can be decoded and cropped in one op.
  """
  side = tf.minimum(height, width) if tf.is_tensor(height) else min(height, width)
  return (height - side) // 2, (width - side) // 2, side


def _decode_any_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
  # expand_animations=False: a GIF gives its first frame, every format a 3-D image.
  return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def decode_and_center_square(image_bytes: tf.Tensor, resize_size: int = RESIZE_SIZE) -> tf.Tensor:
  """Encoded image -> uint8 ``(resize_size, resize_size, 3)`` RGB central square.

  JPEG (the only format ImageNet and the embedded dataset store) takes the fused
  ``decode_and_crop_jpeg`` path, which skips the pixels outside the square; other formats are
  decoded whole. Rescaling is bilinear with antialiasing (a convex combination of source pixels,
  so values stay in 0..255), then rounded to uint8, the form in which the paper stored its
  256x256 training images.
  """
  image_bytes = tf.convert_to_tensor(image_bytes, tf.string)

  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes)
    offset_y, offset_x, side = central_square_window(shape[0], shape[1])
    return tf.io.decode_and_crop_jpeg(image_bytes, tf.stack([offset_y, offset_x, side, side]),
                                      channels=3)

  def other():
    image = _decode_any_rgb(image_bytes)
    shape = tf.shape(image)
    offset_y, offset_x, side = central_square_window(shape[0], shape[1])
    return tf.image.crop_to_bounding_box(image, offset_y, offset_x, side, side)

  square = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  square.set_shape([None, None, 3])
  resized = tf.image.resize(square, [resize_size, resize_size], method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def decode_and_warp(image_bytes: tf.Tensor, resize_size: int = RESIZE_SIZE) -> tf.Tensor:
  """Encoded image -> uint8 ``(resize_size, resize_size, 3)`` RGB: the whole image, warped.

  Caffe's ImageNet pipeline (``convert_imageset --resize_height=256 --resize_width=256``):
  both sides rescaled to 256, the aspect ratio not kept, with OpenCV's plain bilinear
  interpolation (no antialiasing, as here). The published BVLC/CaffeNet accuracies were
  measured on such images.
  """
  image = _decode_any_rgb(tf.convert_to_tensor(image_bytes, tf.string))
  image.set_shape([None, None, 3])
  resized = tf.image.resize(image, [resize_size, resize_size], method='bilinear', antialias=False)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def decode_and_resize(image_bytes: tf.Tensor, resize_size: int = RESIZE_SIZE,
                      warp: bool = False) -> tf.Tensor:
  """:func:`decode_and_warp` if ``warp`` (Caffe), else :func:`decode_and_center_square`."""
  if warp:
    return decode_and_warp(image_bytes, resize_size)
  return decode_and_center_square(image_bytes, resize_size)


def _source_window(side, resize_size: int, start, crop_size: int):
  """[first, last) pixels of a ``side``-long edge that the outputs ``start .. start + crop_size``
  of its antialiased bilinear rescale to ``resize_size`` read (the kernel's support, plus one)."""
  inv_scale = tf.cast(side, tf.float32) / resize_size
  radius = tf.maximum(inv_scale, 1.0)
  start = tf.cast(start, tf.float32)
  first = tf.floor((start + 0.5) * inv_scale - radius) - 1.0
  last = tf.math.ceil((start + crop_size - 0.5) * inv_scale + radius) + 1.0
  first = tf.cast(tf.maximum(first, 0.0), tf.int32)
  return first, tf.minimum(tf.cast(last, tf.int32), side)


def decode_square_crop(image_bytes: tf.Tensor, offset_y, offset_x, crop_size: int = CROP_SIZE,
                       resize_size: int = RESIZE_SIZE) -> tf.Tensor:
  """``decode_and_center_square(image_bytes, resize_size)[offset_y:, offset_x:][:crop, :crop]``,
  uint8, decoding and rescaling only the part of the image that crop reads.

  A JPEG is decoded only inside the window the crop's rescaling kernel touches
  (``decode_and_crop_jpeg``), and only the crop's pixels are rescaled, with the same kernel and
  coordinates as the whole square (``ScaleAndTranslate``, which ``tf.image.resize`` runs). When
  the square is already ``resize_size`` (prepared data) nothing is rescaled and the crop is
  exact; otherwise a pixel may differ from the whole-square path by one level where float
  rounding lands on .5.
  """
  image_bytes = tf.convert_to_tensor(image_bytes, tf.string)

  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes)
    square_y, square_x, side = central_square_window(shape[0], shape[1])
    y0, y1 = _source_window(side, resize_size, offset_y, crop_size)
    x0, x1 = _source_window(side, resize_size, offset_x, crop_size)
    window = tf.io.decode_and_crop_jpeg(
        image_bytes, tf.stack([square_y + y0, square_x + x0, y1 - y0, x1 - x0]), channels=3)
    return window, side, y0, x0

  def other():
    image = _decode_any_rgb(image_bytes)
    shape = tf.shape(image)
    square_y, square_x, side = central_square_window(shape[0], shape[1])
    return image[square_y:square_y + side, square_x:square_x + side], side, 0, 0

  window, side, y0, x0 = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  window.set_shape([None, None, 3])

  def rescale():
    scale = resize_size / tf.cast(side, tf.float32)
    translation = tf.stack([tf.cast(y0, tf.float32) * scale - tf.cast(offset_y, tf.float32),
                            tf.cast(x0, tf.float32) * scale - tf.cast(offset_x, tf.float32)])
    out = tf.raw_ops.ScaleAndTranslate(
        images=tf.cast(window, tf.float32)[None], size=[crop_size, crop_size],
        scale=tf.stack([scale, scale]), translation=translation, kernel_type='triangle',
        antialias=True)[0]
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

  def unscaled():
    return tf.slice(window, tf.stack([offset_y - y0, offset_x - x0, 0]),
                    [crop_size, crop_size, 3])

  out = tf.cond(tf.equal(side, resize_size), unscaled, rescale)
  out.set_shape([crop_size, crop_size, 3])
  return out


# --------------------------------------------------------------------------------------------
# Stateless randomness
# --------------------------------------------------------------------------------------------
def example_key(seed, epoch, index) -> tf.Tensor:
  """The stateless key (shape [2], int32) of example ``index`` in epoch ``epoch`` of a run."""
  key = tf.random.experimental.stateless_fold_in(
      tf.stack([tf.constant(0, tf.int64), tf.cast(seed, tf.int64)]), tf.cast(epoch, tf.int64))
  return tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))


def augment_params(key: tf.Tensor, image_size: int = RESIZE_SIZE, crop_size: int = CROP_SIZE,
                   pca_alpha_std: float = 0.1) -> dict[str, tf.Tensor]:
  """Draws one example's training augmentation from ``key``.

  Returns ``{'offset_y', 'offset_x'}`` (int32, uniform over the ``image_size - crop_size + 1``
  positions), ``'flip'`` (bool, probability 1/2) and ``'alpha'`` (float32 (3,), ``N(0,
  pca_alpha_std)``).
  """
  if crop_size > image_size:
    raise ValueError(f'crop_size {crop_size} is larger than the {image_size} image; use a crop '
                     'size no larger than resize_size.')
  keys = tf.random.experimental.stateless_split(key, 4)
  max_offset = image_size - crop_size
  offset_y = tf.random.stateless_uniform([], keys[0], 0, max_offset + 1, dtype=tf.int32)
  offset_x = tf.random.stateless_uniform([], keys[1], 0, max_offset + 1, dtype=tf.int32)
  flip = tf.random.stateless_uniform([], keys[2]) < 0.5
  alpha = tf.random.stateless_normal([3], keys[3], stddev=pca_alpha_std)
  return {'offset_y': offset_y, 'offset_x': offset_x, 'flip': flip, 'alpha': alpha}


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------
def pca_shift(alpha, eigval: Sequence[float], eigvec) -> tf.Tensor:
  """The paper's RGB shift ``[p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T`` (float32 (3,)).

  ``eigvec`` is (3, 3) with the eigenvectors as columns; ``eigval`` their eigenvalues.
  """
  eigvec = tf.constant(np.asarray(eigvec, np.float32))
  eigval = tf.constant(np.asarray(eigval, np.float32))
  return tf.linalg.matvec(eigvec, tf.cast(alpha, tf.float32) * eigval)


def pixel_affine(mean_rgb: Sequence[float], shift=None, input_scale: float = 255.0, *,
                 affine=None) -> tuple[tf.Tensor, tf.Tensor]:
  """``(pixel_scale, pixel_offset)`` (float32 () or (3,), and (3,)) mapping 0..255 pixels to inputs.

  ``input = pixel * pixel_scale + pixel_offset`` is ``(pixel / 255 - mean_rgb + shift) *
  input_scale``; the device applies it to uint8 crops (``alexnet_jax.device_augment``). With
  ``affine``, a preset's per-channel ``(scale, offset)`` (``model.preprocess_affine``) replaces
  ``mean_rgb`` and ``input_scale``, and the colour noise is added to the pixels before it:
  ``preprocess(pixel + 255 * shift)``, in the same 0..255 units as without a preset.
  """
  if affine is not None:
    scale, offset = (tf.constant(np.asarray(a, np.float32)) for a in affine)
    if shift is not None:
      offset = offset + 255.0 * shift * scale
    return scale, offset
  offset = -tf.constant(np.asarray(mean_rgb, np.float32))
  if shift is not None:
    offset = offset + shift
  return tf.constant(input_scale / 255.0, tf.float32), offset * input_scale


def normalize(image: tf.Tensor, mean_rgb: Sequence[float], shift=None,
              input_scale: float = 255.0) -> tf.Tensor:
  """``(image / 255 - mean_rgb + shift) * input_scale`` as float32; ``image`` in 0..255."""
  scale, offset = pixel_affine(mean_rgb, shift, input_scale)
  # One fused multiply-add per pixel.
  return tf.cast(image, tf.float32) * scale + offset


# --------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------
def crop(image: tf.Tensor, offset_y, offset_x, crop_size: int = CROP_SIZE) -> tf.Tensor:
  """``image[offset_y:offset_y + crop_size, offset_x:offset_x + crop_size]`` (HWC)."""
  return tf.slice(image, tf.stack([offset_y, offset_x, 0]), [crop_size, crop_size, -1])


def ten_crop_offsets(image_size: int = RESIZE_SIZE,
                     crop_size: int = CROP_SIZE) -> tuple[tuple[int, int], ...]:
  """(offset_y, offset_x) of the paper's five test patches: the four corners, then the centre.

  Order: top-left, top-right, bottom-left, bottom-right, centre. :func:`ten_crop_images`
  returns these five followed by their horizontal reflections in the same order.
  """
  far = image_size - crop_size
  mid = far // 2
  return ((0, 0), (0, far), (far, 0), (far, far), (mid, mid))


def train_image(image: tf.Tensor, key: tf.Tensor, *, mean_rgb, pca_eigval, pca_eigvec,
                pca_alpha_std: float = 0.1, crop_size: int = CROP_SIZE,
                input_scale: float = 255.0) -> tf.Tensor:
  """A training input: random crop, random flip, PCA colour noise, mean removed (float32)."""
  image_size = image.shape[0]
  params = augment_params(key, image_size, crop_size, pca_alpha_std)
  patch = crop(image, params['offset_y'], params['offset_x'], crop_size)
  patch = tf.cond(params['flip'], lambda: tf.reverse(patch, axis=[1]), lambda: patch)
  shift = pca_shift(params['alpha'], pca_eigval, pca_eigvec)
  out = normalize(patch, mean_rgb, shift, input_scale)
  out.set_shape([crop_size, crop_size, 3])
  return out


def center_crop_image(image: tf.Tensor, *, mean_rgb, crop_size: int = CROP_SIZE,
                      input_scale: float = 255.0) -> tf.Tensor:
  """The eval input: the centre ``crop_size`` patch, mean removed (float32)."""
  mid = (image.shape[0] - crop_size) // 2
  out = normalize(crop(image, mid, mid, crop_size), mean_rgb, None, input_scale)
  out.set_shape([crop_size, crop_size, 3])
  return out


def five_crops(image: tf.Tensor, crop_size: int = CROP_SIZE) -> tf.Tensor:
  """The paper's five test patches of ``image`` (:func:`ten_crop_offsets` order), stacked."""
  return tf.stack([crop(image, y, x, crop_size)
                   for y, x in ten_crop_offsets(image.shape[0], crop_size)])


def ten_crop_images(image: tf.Tensor, *, mean_rgb, crop_size: int = CROP_SIZE,
                    input_scale: float = 255.0) -> tf.Tensor:
  """The paper's test patches, float32 ``(10, crop_size, crop_size, 3)``, mean removed.

  Patches 0-4: top-left, top-right, bottom-left, bottom-right, centre; 5-9: their horizontal
  reflections, in the same order.
  """
  stacked = five_crops(image, crop_size)
  stacked = tf.concat([stacked, tf.reverse(stacked, axis=[2])], axis=0)
  out = normalize(stacked, mean_rgb, None, input_scale)
  out.set_shape([NUM_TEN_CROPS, crop_size, crop_size, 3])
  return out


# --------------------------------------------------------------------------------------------
# The host's share: decode + crop to uint8, and the example's few drawn numbers
# --------------------------------------------------------------------------------------------
def _decode_crop(image_bytes: tf.Tensor, offset_y, offset_x, crop_size: int, resize_size: int,
                 warp: bool) -> tf.Tensor:
  """One uint8 crop of the resized image: of the warped whole image (``warp``, Caffe's), else of
  the central square, decoding only the window the crop reads (:func:`decode_square_crop`)."""
  if warp:
    return crop(decode_and_warp(image_bytes, resize_size), offset_y, offset_x, crop_size)
  return decode_square_crop(image_bytes, offset_y, offset_x, crop_size, resize_size)


def train_crop(image_bytes: tf.Tensor, key: tf.Tensor, *, mean_rgb, pca_eigval, pca_eigvec,
               pca_alpha_std: float = 0.1, crop_size: int = CROP_SIZE,
               resize_size: int = RESIZE_SIZE, input_scale: float = 255.0, affine=None,
               warp: bool = False) -> dict[str, tf.Tensor]:
  """A training example for ``device_augment``: the random crop as uint8, its flip and colour.

  The same draws from ``key`` as :func:`train_image`, which applies them on the host; here the
  device applies ``flip``, ``pixel_scale`` and ``pixel_offset`` (PCA noise and mean together).
  ``affine`` (a preset's preprocessing) and ``warp``: see :func:`pixel_affine`,
  :func:`decode_and_warp`.
  """
  params = augment_params(key, resize_size, crop_size, pca_alpha_std)
  image = _decode_crop(image_bytes, params['offset_y'], params['offset_x'], crop_size,
                       resize_size, warp)
  scale, offset = pixel_affine(mean_rgb, pca_shift(params['alpha'], pca_eigval, pca_eigvec),
                               input_scale, affine=affine)
  return {'image': image, 'flip': params['flip'], 'pixel_scale': scale, 'pixel_offset': offset}


def eval_crops(image_bytes: tf.Tensor, *, mean_rgb, five: bool = False,
               crop_size: int = CROP_SIZE, resize_size: int = RESIZE_SIZE,
               input_scale: float = 255.0, affine=None,
               warp: bool = False) -> dict[str, tf.Tensor]:
  """An eval example for ``device_augment``: the centre crop (uint8), or the five test patches
  (the device adds their reflections), and the mean to remove (``affine``, ``warp``: see
  :func:`train_crop`)."""
  if five:
    image = five_crops(decode_and_resize(image_bytes, resize_size, warp), crop_size)
  else:
    mid = (resize_size - crop_size) // 2
    image = _decode_crop(image_bytes, mid, mid, crop_size, resize_size, warp)
  scale, offset = pixel_affine(mean_rgb, None, input_scale, affine=affine)
  return {'image': image, 'pixel_scale': scale, 'pixel_offset': offset}
