"""``alexnet_jax_shapes``: the embedded offline dataset, drawn by code, stored as JPEG in TFDS.

Ten classes of large filled shapes (:data:`CLASS_NAMES`), each drawn with a random colour on a
random two-colour gradient background, at a random scale (filling about half to four fifths of
the shorter side), position, rotation and aspect ratio, over light clutter (thin lines and dots)
and with mild Gaussian noise. Colours are drawn independently of the class, so the mean colour
says nothing about the label: the task needs shape. Images are 256 pixels on the shorter side
and 256 to 384 on the longer (landscape and portrait), JPEG-encoded, so they go through the very
same decode, crop and augmentation path as ImageNet.

Every image is a pure function of ``(split, index)`` (its own numpy ``SeedSequence``), so the
dataset is identical on every machine. Preparing the default config (3000 train, 500 validation)
takes about half a minute on 2 cores; ``tiny`` (200 / 60) exists for tests.

Use it like any TFDS dataset once this module is imported::

    import alexnet_jax.datasets.shapes  # registers the builder
    builder = tfds.builder('alexnet_jax_shapes', data_dir=...)
    builder.download_and_prepare()
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw, ImageFont

NAME = 'alexnet_jax_shapes'
CLASS_NAMES = ('circle', 'square', 'triangle', 'star', 'cross', 'ring', 'crescent', 'arrow',
               'heart', 'hexagon')
SHORT_SIDE = 256
MAX_LONG_SIDE = 384
JPEG_QUALITY = 90
_SPLIT_IDS = {'train': 0, 'validation': 1}

# Pixel statistics of the 3000 training images (``python -m alexnet_jax.data_stats
# --num_images=3000 ...``), in the layout of ``alexnet_jax.augment``'s ImageNet defaults: random
# colours give a mid-grey mean and a nearly isotropic colour covariance.
MEAN_RGB = (0.4928, 0.4990, 0.4893)
PCA_EIGVAL = (0.0983, 0.0562, 0.0503)
PCA_EIGVEC = (
    (-0.4877, -0.3994, -0.7763),
    (-0.8401, -0.0270, 0.5417),
    (-0.2373, 0.9164, -0.3224),
)


# --------------------------------------------------------------------------------------------
# Shapes as polygons in unit coordinates (about radius 1, centred on the origin, y down).
# Each class is a list of (polygon, filled) pairs drawn in order: filled=False cuts a hole.
# --------------------------------------------------------------------------------------------
def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
  t = phase + 2 * np.pi * np.arange(n) / n
  return radius * np.stack([np.sin(t), -np.cos(t)], -1)


def _star() -> np.ndarray:
  outer, inner = _regular(5, 1.0), _regular(5, 0.42, np.pi / 5)
  return np.stack([outer, inner], 1).reshape(-1, 2)


def _cross() -> np.ndarray:
  a, b = 0.3, 1.0
  return np.array([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b),
                   (-a, a), (-b, a), (-b, -a), (-a, -a)])


def _arrow() -> np.ndarray:
  return np.array([(-1.0, -0.28), (0.15, -0.28), (0.15, -0.7), (1.0, 0.0), (0.15, 0.7),
                   (0.15, 0.28), (-1.0, 0.28)])


def _heart() -> np.ndarray:
  t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
  x = 16 * np.sin(t) ** 3
  y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
  pts = np.stack([x, y + 2.5], -1)
  return pts / np.abs(pts).max()


_SHAPES = {
    'circle': [(_regular(72), True)],
    'square': [(_regular(4, 1.0, np.pi / 4) * 1.05, True)],
    'triangle': [(_regular(3, 1.15) + (0, 0.2), True)],
    'star': [(_star() * 1.1, True)],
    'cross': [(_cross(), True)],
    'ring': [(_regular(72), True), (_regular(72, 0.55), False)],
    'crescent': [(_regular(72), True), (_regular(72, 0.85) + (0.45, -0.1), False)],
    'arrow': [(_arrow(), True)],
    'heart': [(_heart() * 1.05, True)],
    'hexagon': [(_regular(6, 1.0), True)],
}
assert tuple(_SHAPES) == CLASS_NAMES


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _luma(rgb: np.ndarray) -> float:
  return float(np.dot(rgb, (0.299, 0.587, 0.114)))


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Two background colours and a shape colour whose luma differs from both by >= 60."""
  while True:
    bg0, bg1, fg = rng.integers(0, 256, (3, 3))
    if (abs(_luma(bg0) - _luma(bg1)) < 80 and abs(_luma(fg) - _luma(bg0)) >= 60
        and abs(_luma(fg) - _luma(bg1)) >= 60):
      return bg0.astype(np.float32), bg1.astype(np.float32), fg.astype(np.float32)


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
  long_side = int(rng.integers(SHORT_SIDE, MAX_LONG_SIDE + 1))
  if rng.random() < 0.25:  # Portrait.
    return long_side, SHORT_SIDE
  return SHORT_SIDE, long_side


def render(split: str, index: int) -> tuple[np.ndarray, int]:
  """Example ``index`` of ``split``: a uint8 (H, W, 3) image and its label (``index % 10``)."""
  pixels, label, _ = render_with_mask(split, index)
  return pixels, label


def render_with_mask(split: str, index: int) -> tuple[np.ndarray, int, np.ndarray]:
  """:func:`render` and the object's boolean (H, W) mask."""
  rng = np.random.default_rng([_SPLIT_IDS[split], index, 20120904])
  label = index % len(CLASS_NAMES)
  height, width = _image_size(rng)
  bg0, bg1, fg = _contrasting_colours(rng)

  # Background: a linear gradient between two colours in a random direction.
  theta = rng.uniform(0, 2 * np.pi)
  ramp = (np.float32(np.sin(theta) / height) * np.arange(height, dtype=np.float32)[:, None]
          + np.float32(np.cos(theta) / width) * np.arange(width, dtype=np.float32)[None, :])
  ramp -= ramp.min()
  ramp *= 1.0 / max(float(ramp.max()), 1e-6)
  background = bg0 + (bg1 - bg0) * ramp[..., None]
  canvas = Image.fromarray(background.astype(np.uint8))

  # Clutter: a few thin lines and small dots in random colours, anywhere.
  draw = ImageDraw.Draw(canvas)
  for _ in range(int(rng.integers(2, 6))):
    x0, x1 = rng.uniform(0, width, 2)
    y0, y1 = rng.uniform(0, height, 2)
    draw.line([(x0, y0), (x1, y1)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
              width=int(rng.integers(1, 4)))
  for _ in range(int(rng.integers(4, 12))):
    cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1.5, 5)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r],
                 fill=tuple(int(c) for c in rng.integers(0, 256, 3)))

  # The shape: scale, aspect, rotation, and a position kept well inside the central square so
  # that the 256 centre crop and every 227 training crop show most of it.
  radius = rng.uniform(0.26, 0.40) * SHORT_SIDE
  aspect = rng.uniform(0.85, 1.15)
  rot = rng.uniform(0, 2 * np.pi)
  jitter = max(0.0, 0.5 * (SHORT_SIDE * 0.45 - radius))
  centre = np.array([width / 2, height / 2]) + rng.uniform(-jitter, jitter, 2)
  rotation = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
  mask = Image.new('L', (width, height), 0)
  mask_draw = ImageDraw.Draw(mask)
  for polygon, filled in _SHAPES[CLASS_NAMES[label]]:
    pts = (polygon * (aspect, 1.0 / aspect)) @ rotation.T * radius + centre
    mask_draw.polygon([tuple(p) for p in pts], fill=255 if filled else 0)
  canvas.paste(tuple(int(c) for c in fg), mask=mask)

  # Mild sensor noise: a window of a fixed noise field, scaled (cheaper than fresh normals and
  # just as deterministic).
  field = _noise_field()
  oy = int(rng.integers(0, field.shape[0] - height + 1))
  ox = int(rng.integers(0, field.shape[1] - width + 1))
  pixels = np.asarray(canvas, np.float32)
  pixels += field[oy:oy + height, ox:ox + width] * np.float32(rng.uniform(2.0, 8.0))
  np.clip(pixels, 0, 255, out=pixels)
  return pixels.astype(np.uint8), label, np.asarray(mask) > 0


@functools.cache
def _noise_field() -> np.ndarray:
  """A fixed (512, 512, 3) field of N(0, 1) float32 noise."""
  side = MAX_LONG_SIDE + 128
  return np.random.default_rng(1234).standard_normal((side, side, 3), dtype=np.float32)


def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


# --------------------------------------------------------------------------------------------
# The TFDS builder
# --------------------------------------------------------------------------------------------
class _DrawnDatasetInfo(tfds.core.DatasetInfo):
  """DatasetInfo of a dataset drawn here: TFDS's cloud bucket never has it."""

  def initialize_from_bucket(self) -> None:
    # TFDS calls this for a data dir not yet prepared, and its version makes a temporary
    # folder before it looks in the bucket, then leaves it behind when the dataset is not
    # there: one empty /tmp/tmp*tfds per builder made. Nothing to look up for drawn data.
    pass


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  num_train: int = 3000
  num_validation: int = 500


class AlexnetJaxShapes(tfds.core.GeneratorBasedBuilder):
  """Procedurally drawn shapes, 10 classes, JPEG, generated offline (registered as NAME)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
      ShapesConfig(name='default', description='3000 train / 500 validation images.'),
      ShapesConfig(name='tiny', description='200 train / 60 validation images (for tests).',
                   num_train=200, num_validation=60),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return _DrawnDatasetInfo(
        builder=self,
        description=__doc__.split('\n\n')[1],
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/ (generated by alexnet_jax.datasets.shapes)',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
        'train': self._generate_examples('train', self.builder_config.num_train),
        'validation': self._generate_examples('validation', self.builder_config.num_validation),
    }

  def _generate_examples(self, split: str, count: int):
    for index in range(count):
      pixels, label = render(split, index)
      yield index, {'image': encode_jpeg(pixels), 'label': label}


assert AlexnetJaxShapes.name == NAME


# --------------------------------------------------------------------------------------------
# A picture of the dataset for the README
# --------------------------------------------------------------------------------------------
def sample_grid(per_class: int = 6, thumb: int = 80, split: str = 'train') -> Image.Image:
  """A grid image: one row per class, ``per_class`` examples each, labelled on the left."""
  label_width = 80
  grid = Image.new('RGB', (label_width + per_class * (thumb + 4), len(CLASS_NAMES) * (thumb + 4)),
                   'white')
  draw = ImageDraw.Draw(grid)
  font = ImageFont.load_default()
  for label, name in enumerate(CLASS_NAMES):
    top = label * (thumb + 4) + 2
    draw.text((4, top + thumb // 2 - 6), name, fill='black', font=font)
    for k in range(per_class):
      pixels, got = render(split, label + len(CLASS_NAMES) * k)
      assert got == label
      image = Image.fromarray(pixels)
      image.thumbnail((thumb, thumb))
      grid.paste(image, (label_width + k * (thumb + 4) + (thumb - image.width) // 2,
                         top + (thumb - image.height) // 2))
  return grid


def main():
  """``python -m alexnet_jax.datasets.shapes [out.png]``: writes the sample grid."""
  import sys  # pylint: disable=g-import-not-at-top
  path = sys.argv[1] if len(sys.argv) > 1 else 'docs/embedded_samples.png'
  sample_grid().save(path, optimize=True)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
