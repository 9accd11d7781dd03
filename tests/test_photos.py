"""Photo loading for prediction (alexnet_jax.photos) and the shipped class names.

References: the crops against the training pipeline's TF crops (augment), the class list
against TFDS's own imagenet2012 label file and Imagenette's published synset names.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from alexnet_jax import augment
from alexnet_jax import class_names
from alexnet_jax import photos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Imagenette's ten classes as fast.ai publishes them (synset, name).
IMAGENETTE = (('n01440764', 'tench'), ('n02102040', 'English springer'),
              ('n02979186', 'cassette player'), ('n03000684', 'chain saw'),
              ('n03028079', 'church'), ('n03394916', 'French horn'),
              ('n03417042', 'garbage truck'), ('n03425413', 'gas pump'),
              ('n03445777', 'golf ball'), ('n03888257', 'parachute'))
WORDNET = '/usr/share/wordnet/data.noun'


def test_imagenet_synsets_are_tfds_labels_in_order():
  tfds_labels = tfds.core.tfds_path('datasets/imagenet2012/labels.txt').read_text().split()
  assert class_names.imagenet_synsets() == tuple(tfds_labels)
  assert len(set(class_names.imagenet_names())) > 990  # a few WordNet names repeat ('crane')


def test_imagenet_names_match_imagenette_and_wordnet():
  table = dict(class_names.imagenet_classes())
  for synset, name in IMAGENETTE:
    assert table[synset].lower() == name.lower()
  if not os.path.exists(WORDNET):
    pytest.skip(f'{WORDNET} not installed (Debian: wordnet-base)')
  sys.path.insert(0, os.path.join(REPO, 'experiments'))
  import make_imagenet_classes  # pylint: disable=g-import-not-at-top
  make_imagenet_classes.check_against_wordnet(  # raises on a mismatch
      class_names.imagenet_synsets(), class_names.imagenet_names(),
      make_imagenet_classes.wordnet_lemmas(WORDNET))


def test_names_for_a_model():
  assert class_names.for_model(1000)[:2] == ('tench', 'goldfish')
  assert class_names.for_model(3) == ('class 0', 'class 1', 'class 2')
  assert class_names.for_data_config({'source': 'embedded'})[0] == 'circle'


def test_find_images_walks_folders_and_keeps_files_as_given(tmp_path):
  (tmp_path / 'a' / 'b').mkdir(parents=True)
  (tmp_path / '.hidden').mkdir()
  for name in ('a/x.JPG', 'a/b/y.png', 'a/notes.txt', 'a/.z.jpg', '.hidden/w.jpg', 'top.jpeg'):
    (tmp_path / name).write_bytes(b'')
  given = tmp_path / 'a' / 'notes.txt'
  found = photos.find_images([str(tmp_path), str(given)])
  rel = [os.path.relpath(f, tmp_path) for f in found]
  assert rel == ['top.jpeg', 'a/x.JPG', 'a/b/y.png', 'a/notes.txt']
  with pytest.raises(FileNotFoundError, match='missing.jpg does not exist'):
    photos.find_images([str(tmp_path / 'missing.jpg')])


@pytest.mark.parametrize('size,warp,expected', [((300, 400), False, (256, 341)),
                                                 ((500, 260), False, (492, 256)),
                                                 ((300, 400), True, (256, 256))])
def test_resize_shorter_side_or_warp(size, warp, expected):
  image = np.random.default_rng(0).integers(0, 256, size + (3,), dtype=np.uint8)
  out = photos.resize(image, 256, warp)
  assert out.shape == expected + (3,) and out.dtype == np.uint8


def test_crops_equal_the_training_pipelines_crops():
  image = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
  reference = augment.ten_crop_images(tf.constant(image), mean_rgb=(0.0, 0.0, 0.0),
                                      crop_size=227, input_scale=255.0).numpy()
  np.testing.assert_array_equal(photos.ten_crops(image, 227).astype(np.float32), reference)
  centre = augment.center_crop_image(tf.constant(image), mean_rgb=(0.0, 0.0, 0.0),
                                     crop_size=227, input_scale=255.0).numpy()
  np.testing.assert_array_equal(photos.center_crop(image, 227).astype(np.float32), centre)


def test_load_rgb_converts_modes_and_applies_exif_rotation(tmp_path):
  pixels = np.zeros((20, 30, 3), np.uint8)
  pixels[:, :10] = (255, 0, 0)
  Image.fromarray(pixels).convert('L').save(tmp_path / 'gray.png')
  Image.fromarray(pixels).convert('RGBA').save(tmp_path / 'rgba.png')
  Image.fromarray(pixels).convert('CMYK').save(tmp_path / 'cmyk.jpg')
  rotated = Image.fromarray(pixels)
  exif = rotated.getexif()
  exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
  rotated.save(tmp_path / 'exif.jpg', exif=exif)
  for name in ('gray.png', 'rgba.png', 'cmyk.jpg'):
    assert photos.load_rgb(str(tmp_path / name)).shape == (20, 30, 3)
  assert photos.load_rgb(str(tmp_path / 'exif.jpg')).shape == (30, 20, 3)
  (tmp_path / 'bad.jpg').write_bytes(b'not an image')
  with pytest.raises(OSError):
    photos.load_rgb(str(tmp_path / 'bad.jpg'))
