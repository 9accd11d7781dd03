"""``python -m alexnet_jax.predict`` end to end on a real photo (matplotlib's Grace Hopper).

Weights are random (saved by alexnet_jax.weights.save, or a tiny training run's workdir); every
printed probability is checked against the model applied directly to pixels prepared here
independently (Pillow resize and NumPy crops, the preset's ``model.preprocess``).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import class_names
from alexnet_jax import model as model_lib
from alexnet_jax import predict
from alexnet_jax import unrolled_threefry
from alexnet_jax import weights

import tiny_config as tiny

GRACE = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'sample_data',
                     'grace_hopper.jpg')  # 512 x 600, a real photo


def _random_weights(tmp_path, name, num_classes=1000):
  model = model_lib.preset(name, num_classes=num_classes)
  size = model_lib.PRESET_INPUTS[name].input_size
  # Jitted: init's forward pass is dead code there (eager, it runs op by op at full size).
  variables = unrolled_threefry.jit(model.init)(jax.random.key(3), jnp.zeros((1, size, size, 3)))
  # Larger logits than the init's, so that the top classes are far apart.
  variables = jax.tree_util.tree_map(lambda x: x, variables)
  variables['params']['fc8']['kernel'] = variables['params']['fc8']['kernel'] * 40
  path = str(tmp_path / f'{name}.safetensors')
  weights.save(path, model, variables)
  return path, model, variables


def _expected(model, variables, name, pixels):
  """Softmax of the model on ``pixels`` (uint8, N[, 10], H, W, 3), averaged over crops."""
  x = jnp.asarray(model_lib.preprocess(name, pixels))
  logits = jax.jit(model.apply)(variables, x.reshape((-1,) + x.shape[-3:]))  # not op by op
  probs = jax.nn.softmax(logits).reshape(pixels.shape[:-3] + (-1,))
  return np.asarray(probs if pixels.ndim == 4 else probs.mean(axis=1))


def _warped_centre(path):
  """Caffe's preparation: the whole photo warped to 256x256, the central 227x227."""
  image = np.asarray(Image.open(path).convert('RGB').resize((256, 256), Image.BILINEAR))
  return image[14:241, 14:241]


def _grace_ten_crops_224():
  """torchvision's: shorter side to 256 (600 -> 300), ten 224 crops (corners, centre, flips)."""
  image = np.asarray(Image.open(GRACE).convert('RGB').resize((256, 300), Image.BILINEAR))
  h, w = image.shape[:2]
  offsets = [(0, 0), (0, w - 224), (h - 224, 0), (h - 224, w - 224), (38, 16)]
  crops = [image[y:y + 224, x:x + 224] for y, x in offsets]
  return np.stack(crops + [c[:, ::-1] for c in crops])


def _run(capsys, *args):
  with pytest.raises(SystemExit) as exit_info:
    predict.main(list(args))
    raise SystemExit(0)
  out = capsys.readouterr()
  return exit_info.value.code or 0, out.out, out.err


def _check_top(entry, probs, names):
  order = np.argsort(-probs)[:5]
  assert [t['index'] for t in entry['top']] == list(order)
  np.testing.assert_allclose([t['probability'] for t in entry['top']], probs[order],
                             rtol=1e-4, atol=1e-6)
  assert [t['name'] for t in entry['top']] == [names[i] for i in order]


def test_bvlc_weights_on_a_folder_with_an_unreadable_file(tmp_path, capsys):
  path, model, variables = _random_weights(tmp_path, 'bvlc')
  photos_dir = tmp_path / 'photos'
  (photos_dir / 'more').mkdir(parents=True)
  shutil.copy(GRACE, photos_dir / 'grace.jpg')
  Image.open(GRACE).transpose(Image.FLIP_LEFT_RIGHT).save(photos_dir / 'more' / 'mirror.png')
  (photos_dir / 'more' / 'broken.jpg').write_bytes(b'\xff\xd8 not really a JPEG')
  code, out, err = _run(capsys, '--weights', path, '--json', '--batch-size', '2', GRACE,
                        str(photos_dir))
  assert code == 0, err
  result = json.loads(out)
  files = [p['file'] for p in result['predictions']]
  assert files == [GRACE, str(photos_dir / 'grace.jpg'), str(photos_dir / 'more' / 'mirror.png')]
  assert [s['file'] for s in result['skipped']] == [str(photos_dir / 'more' / 'broken.jpg')]
  assert 'warning: skipped' in err and 'broken.jpg' in err
  assert '3 images classified, 1 skipped' in err
  pixels = np.stack([_warped_centre(f) for f in files])
  probs = _expected(model, variables, 'bvlc', pixels)
  names = class_names.imagenet_names()
  for entry, p in zip(result['predictions'], probs):
    _check_top(entry, p, names)
    assert entry['top'][0]['synset'] == class_names.imagenet_synsets()[entry['top'][0]['index']]
  assert probs[0, np.argmax(probs[0])] > 0.05  # the check above compared meaningful numbers


def test_torchvision_ten_crop_text_output(tmp_path, capsys):
  path, model, variables = _random_weights(tmp_path, 'torchvision')
  code, out, err = _run(capsys, '--weights', path, '--ten-crop', GRACE)
  assert code == 0, err
  lines = out.strip().splitlines()
  assert lines[0] == GRACE and len(lines) == 6
  probs = _expected(model, variables, 'torchvision', _grace_ten_crops_224()[None])[0]
  names = class_names.imagenet_names()
  for line, index in zip(lines[1:], np.argsort(-probs)[:5]):
    value, synset, name = line.split(maxsplit=2)
    assert float(value) == pytest.approx(probs[index], abs=6e-5)
    assert (synset, name) == class_names.imagenet_classes()[index]
    assert name == names[index]


def _shorter_side_centre(resize, crop):
  """GRACE (512 wide, 600 high) with its shorter side resized to ``resize``, the central
  ``crop`` square (torchvision's rounding of the offsets)."""
  height = int(resize * 600 / 512)
  top, left = round((height - crop) / 2), round((resize - crop) / 2)
  image = np.asarray(Image.open(GRACE).convert('RGB').resize((resize, height), Image.BILINEAR))
  return image[top:top + crop, left:left + crop]


def test_a_runs_workdir_uses_its_own_classes_and_preprocessing(tmp_path_factory, capsys):
  """The tiny run was trained at 67 px, not its preset's 227: predict takes its crop."""
  workdir, _ = tiny.reference_run(tmp_path_factory)
  code, out, err = _run(capsys, '--weights', workdir, '--json', GRACE)
  assert code == 0, err
  entry = json.loads(out)['predictions'][0]
  model, variables = weights.load(workdir)
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    data = json.load(f)['data']
  # The run's evaluation: the photo's shorter side (512 wide, 600 high) to the run's resize
  # size (72: 72 x 84), its central crop (67: rows 8.., columns 2..), the run's mean in 0..255
  # units.
  resize, crop = data['resize_size'], data['crop_size']
  assert crop == tiny.SMALLEST_CROP != model_lib.PRESET_INPUTS['paper'].input_size
  pixels = _shorter_side_centre(resize, crop).astype(np.float32)
  x = (pixels / 255.0 - np.asarray(data['mean_rgb'], np.float32)) * data['input_scale']
  probs = np.asarray(jax.nn.softmax(jax.jit(model.apply)(variables, x[None])))[0]
  names = class_names.for_data_config(data)
  assert len(names) == tiny.NUM_CLASSES and names[0] != 'class 0'
  order = np.argsort(-probs)[:tiny.NUM_CLASSES]
  assert [t['name'] for t in entry['top']] == [names[i] for i in order]
  np.testing.assert_allclose([t['probability'] for t in entry['top']], probs[order], rtol=1e-4)


def test_our_file_of_a_67px_run_is_cropped_at_its_recorded_size(tmp_path_factory, tmp_path,
                                                                capsys):
  """Our safetensors of a run trained at 67 px: the paper preset's preprocessing at 67, the
  photo resized in the preset's ratio (256 to 227: 76 for 67)."""
  workdir, _ = tiny.reference_run(tmp_path_factory)
  model, variables, size, _ = weights.load_network(workdir)
  path = str(tmp_path / 'run.safetensors')
  weights.save(path, model, variables, input_size=size)
  code, out, err = _run(capsys, '--weights', path, '--json', GRACE)
  assert code == 0, err
  result = json.loads(out)
  assert 'shorter side to 76, centre 67' in result['preprocessing']
  probs = _expected(model, variables, 'paper', _shorter_side_centre(76, 67)[None])
  _check_top(result['predictions'][0], probs[0], class_names.numbered(tiny.NUM_CLASSES))


@pytest.mark.parametrize('case', ['missing photo', 'no images', 'bad weights', 'wrong preset'])
def test_user_errors_end_in_one_error_line(tmp_path, case, capsys):
  (tmp_path / 'empty').mkdir()
  garbage = tmp_path / 'garbage.onnx'
  garbage.write_bytes(b'\x00\x01 not a model')
  args = {'missing photo': ['--weights', str(garbage), str(tmp_path / 'nope.jpg')],
          'no images': ['--weights', str(garbage), str(tmp_path / 'empty')],
          'bad weights': ['--weights', str(garbage), GRACE],
          'wrong preset': ['--weights', str(garbage), '--preset', 'vgg', GRACE]}[case]
  code, out, err = _run(capsys, *args)
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1 and lines[0].startswith('error: '), err
  assert 'Traceback' not in err and out == ''


def test_the_module_runs_as_a_command(tmp_path):
  path, _, _ = _random_weights(tmp_path, 'caffenet', num_classes=5)
  env = dict(os.environ, PYTHONPATH=tiny.REPO, JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-m', 'alexnet_jax.predict', '--weights', path,
                           '--top', '3', GRACE], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0] == GRACE and [line.split()[1] for line in lines[1:]] != []
  assert all(line.split()[1].startswith('class') for line in lines[1:]) and len(lines) == 4
