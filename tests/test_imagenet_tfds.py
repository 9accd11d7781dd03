"""The imagenet2012 source end to end, without ImageNet.

Tiny fake ``ILSVRC2012_img_train.tar`` (one inner tar per synset) and ``ILSVRC2012_img_val.tar``
are prepared by TFDS's own ``imagenet2012`` builder through ``manual_dir``; then batches are read.
The builder accepts any subset of synsets, and labels the validation images by zipping their
sorted file names with its shipped ``validation_labels.txt``, so six val images get the first six
labels of that file.
"""

import io
import tarfile

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from alexnet_jax import augment
from alexnet_jax import input_pipeline as ip

SYNSETS = ('n01440764', 'n01443537', 'n01739381', 'n02105855')
# The builder repairs these two by name: a CMYK JPEG, and a PNG saved as .JPEG.
CMYK_FILE, PNG_FILE = 'n01739381_1309.JPEG', 'n02105855_2933.JPEG'
NUM_VAL = 6


def _jpeg(colour, size=(48, 40), mode='RGB', fmt='JPEG') -> bytes:
  image = Image.new('RGB', size, colour)
  buf = io.BytesIO()
  image.convert(mode).save(buf, format=fmt)
  return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _write_fake_imagenet(manual_dir):
  manual_dir.mkdir(parents=True)
  with tarfile.open(manual_dir / 'ILSVRC2012_img_train.tar', 'w') as outer:
    for k, synset in enumerate(SYNSETS):
      inner_buf = io.BytesIO()
      with tarfile.open(fileobj=inner_buf, mode='w') as inner:
        for i in range(3):
          _add(inner, f'{synset}_{i}.JPEG', _jpeg((60 * k, 20 * i, 100)))
        if synset == 'n01739381':
          _add(inner, CMYK_FILE, _jpeg((200, 40, 40), mode='CMYK'))
        if synset == 'n02105855':
          _add(inner, PNG_FILE, _jpeg((40, 200, 40), mode='RGBA', fmt='PNG'))
      _add(outer, f'{synset}.tar', inner_buf.getvalue())
  with tarfile.open(manual_dir / 'ILSVRC2012_img_val.tar', 'w') as tar:
    for i in range(NUM_VAL, 0, -1):  # Not in sorted order: the builder sorts the names.
      _add(tar, f'ILSVRC2012_val_{i:08d}.JPEG', _jpeg((10 * i, 10, 10), size=(30 + i, 40)))


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  root = tmp_path_factory.mktemp('imagenet')
  _write_fake_imagenet(root / 'manual')
  c = ip.default_data_config()
  c.source = 'imagenet2012'
  c.data_dir = str(root / 'tfds')
  c.manual_dir = str(root / 'manual')
  c.cache = False  # Stream, as for the real ImageNet.
  c.shuffle_buffer = 16
  return c


def test_unprepared_imagenet_says_how_to_prepare(config):
  with pytest.raises(FileNotFoundError, match='python -m alexnet_jax.input_pipeline '
                     '--config=alexnet_jax/configs/imagenet.py'):
    ip.get_dataset_info(config)


def test_prepare_and_read(config, capsys):
  ip.main(['--config=alexnet_jax/configs/imagenet.py', f'--config.data.data_dir={config.data_dir}',
           f'--config.data.manual_dir={config.manual_dir}'])
  assert 'num_classes=1000' in capsys.readouterr().out
  info = ip.get_dataset_info(config)
  assert info.num_classes == 1000
  assert info.num_train_examples == 3 * len(SYNSETS) + 2
  assert info.num_eval_examples == NUM_VAL
  names = info.class_names

  batches = list(ip.train_batches(config, global_batch_size=4, seed=0, epoch=0,
                                  process_index=0, process_count=1))
  assert len(batches) == 3
  for b in batches:
    chex.assert_shape(b['image'], (4, 227, 227, 3))
    chex.assert_type(b['image'], np.uint8)
    assert {names[label] for label in b['label']} <= set(SYNSETS)
  # Resuming mid-epoch on a streamed source reproduces the rest of the epoch.
  resumed = list(ip.train_batches(config, global_batch_size=4, seed=0, epoch=0, start_step=1,
                                  process_index=0, process_count=1))
  for a, b in zip(batches[1:], resumed, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])

  evals = list(ip.eval_batches(config, global_batch_size=4, ten_crop=True,
                               process_index=0, process_count=1))
  assert len(evals) == 2
  chex.assert_shape(evals[0]['image'], (4, 5, 227, 227, 3))  # The device adds reflections.
  mask = np.concatenate([b['mask'] for b in evals])
  np.testing.assert_array_equal(mask, [True] * NUM_VAL + [False] * 2)
  # Labels: the first NUM_VAL lines of TFDS's validation_labels.txt, in file-name order.
  label_file = tfds.core.tfds_path('datasets/imagenet2012/validation_labels.txt')
  expected = label_file.read_text().split()[:NUM_VAL]
  builder = tfds.builder('imagenet2012', data_dir=config.data_dir)
  stored = {ex['file_name'].numpy().decode(): names[int(ex['label'])]
            for ex in builder.as_dataset(split='validation')}
  assert [stored[f'ILSVRC2012_val_{i:08d}.JPEG'] for i in range(1, NUM_VAL + 1)] == expected
  labels = np.concatenate([b['label'] for b in evals])[:NUM_VAL]
  assert sorted(names[label] for label in labels) == sorted(expected)


def test_repaired_images_come_out_rgb(config):
  """The CMYK and PNG files go through TFDS's repair and our decoder as RGB JPEGs."""
  builder = tfds.builder('imagenet2012', data_dir=config.data_dir)
  ds = builder.as_dataset(split='train', decoders={'image': tfds.decode.SkipDecoding()})
  found = {}
  for ex in ds:
    name = ex['file_name'].numpy().decode()
    if name in (CMYK_FILE, PNG_FILE):
      found[name] = augment.decode_and_center_square(ex['image']).numpy()[128, 128]
  np.testing.assert_allclose(found[CMYK_FILE], (200, 40, 40), atol=6)
  np.testing.assert_allclose(found[PNG_FILE], (40, 200, 40), atol=6)


def _torchvision_safetensors(path, seed=4):
  """A torchvision AlexNet state dict (random weights) in a .safetensors file, and the weights."""
  import weight_files  # pylint: disable=g-import-not-at-top
  from alexnet_jax import weight_formats  # pylint: disable=g-import-not-at-top
  w = weight_files.random_weights(weight_files.TORCHVISION_CONVS, seed=seed)
  keys = {'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
          'conv4': 'features.8', 'conv5': 'features.10', 'fc6': 'classifier.1',
          'fc7': 'classifier.4', 'fc8': 'classifier.6'}
  tensors = {}
  for layer, key in keys.items():
    tensors[f'{key}.weight'], tensors[f'{key}.bias'] = w[layer]
  weight_formats.write_safetensors(str(path), tensors, {})
  return w


def _reference_losses(config, w, mean, std):
  """Per-image loss, top-1 and top-5 hits of the torchvision weights on the validation images,
  prepared independently: TF's JPEG decoder (Pillow's rounds colours differently; decoding is
  not what is tested), Pillow's resize of the shorter side to 256, centre 224, (x/255 - mean)
  / std, torchvision's layers in torch.nn."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import weight_files  # pylint: disable=g-import-not-at-top
  net = weight_files.torchvision_alexnet(w)
  builder = tfds.builder('imagenet2012', data_dir=config.data_dir)
  images, labels = [], []
  for ex in builder.as_dataset(split='validation', decoders={'image': tfds.decode.SkipDecoding()}):
    image = Image.fromarray(tf.io.decode_jpeg(ex['image'], channels=3).numpy())
    width, height = image.size
    scale = 256 / min(width, height)
    image = image.resize((max(256, round(width * scale)), max(256, round(height * scale))),
                         Image.BILINEAR)
    pixels = np.asarray(image, np.float32)
    top, left = (pixels.shape[0] - 224) // 2, (pixels.shape[1] - 224) // 2
    pixels = pixels[top:top + 224, left:left + 224]
    images.append((pixels / 255.0 - np.asarray(mean)) / np.asarray(std))
    labels.append(int(ex['label']))
  with torch.no_grad():
    logits = net(torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).astype(np.float32)))
  logits = logits.numpy().astype(np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
      1, keepdims=True)) - logits.max(1, keepdims=True)
  labels = np.asarray(labels)
  loss = -log_probs[np.arange(len(labels)), labels]
  rank = (logits > logits[np.arange(len(labels)), labels][:, None]).sum(1)
  return loss.mean(), (rank >= 1).mean(), (rank >= 5).mean()


def test_eval_of_imported_weights_uses_the_presets_preprocessing(config, tmp_path):
  """``--mode=eval --config.init_from=FILE`` (the published-accuracy path) on the fake tars."""
  pytest.importorskip('torch')
  from alexnet_jax import trainer  # pylint: disable=g-import-not-at-top
  from alexnet_jax.configs import imagenet  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'alexnet-owt.safetensors'
  w = _torchvision_safetensors(path)
  run = imagenet.get_config()
  run.data.data_dir, run.data.manual_dir = config.data_dir, config.manual_dir
  run.data.cache = False
  run.init_from = str(path)
  run.batch_size = run.eval.batch_size = 4
  results = trainer.evaluate(run, str(tmp_path / 'workdir'))
  got = results['centre_crop']
  assert got['val_examples'] == NUM_VAL and results['checkpoint'] == 'init_from'
  loss, top1, top5 = _reference_losses(config, w, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
  assert got['val_loss'] == pytest.approx(loss, rel=1e-4)
  assert (got['val_top1_error'], got['val_top5_error']) == (top1, top5)
  # The paper's preprocessing (0..255 minus the mean) would give another loss altogether.
  paper_loss, _, _ = _reference_losses(config, w, (0.485, 0.456, 0.406), (1 / 255,) * 3)
  assert abs(paper_loss - loss) > 0.05 * loss
