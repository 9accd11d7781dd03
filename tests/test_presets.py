"""The presets of alexnet_jax.model: parameter shapes and counts, Caffe's LRN and the adaptive
average pool against float64 numpy, whole presets against torch.nn modules with the published
layer sequences (written here from BVLC's prototxt and torchvision's alexnet.py, independent of
the model's tables), the speed options against XLA's own paths, and the preprocessing.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import steps as steps_lib

import weight_files

# Per preset: every kernel's shape for 1000 classes (the published models' layers).
PAPER_SHAPES = {
    'conv1': (11, 11, 3, 96), 'conv2': (5, 5, 48, 256), 'conv3': (3, 3, 256, 384),
    'conv4': (3, 3, 192, 384), 'conv5': (3, 3, 192, 256), 'fc6': (9216, 4096),
    'fc7': (4096, 4096), 'fc8': (4096, 1000)}
TORCHVISION_SHAPES = {
    'conv1': (11, 11, 3, 64), 'conv2': (5, 5, 64, 192), 'conv3': (3, 3, 192, 384),
    'conv4': (3, 3, 384, 256), 'conv5': (3, 3, 256, 256), 'fc6': (9216, 4096),
    'fc7': (4096, 4096), 'fc8': (4096, 1000)}
EXPECTED = {'paper': (PAPER_SHAPES, 60_965_224), 'bvlc': (PAPER_SHAPES, 60_965_224),
            'caffenet': (PAPER_SHAPES, 60_965_224),
            'torchvision': (TORCHVISION_SHAPES, 61_100_840)}
NUM_CLASSES = 10


def _input_size(name):
  return model_lib.PRESET_INPUTS[name].input_size


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_parameter_shapes_and_counts(name):
  shapes, total = EXPECTED[name]
  size = _input_size(name)
  params = jax.eval_shape(model_lib.preset(name).init, jax.random.key(0),
                          jnp.zeros((1, size, size, 3)))['params']
  assert {k: (v['kernel'].shape, v['bias'].shape) for k, v in params.items()} == {
      k: (s, (s[-1],)) for k, s in shapes.items()}
  assert model_lib.count_params(params) == total


def test_torchvision_takes_any_input_of_at_least_63_pixels():
  net = model_lib.preset('torchvision', num_classes=NUM_CLASSES)
  for size in (63, 255):
    params = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    assert params['params']['fc6']['kernel'].shape == (9216, 4096)


def test_overrides_and_unknown_names():
  net = model_lib.preset('bvlc', num_classes=21, dtype=jnp.bfloat16)
  assert (net.num_classes, net.dtype, net.lrn_groups, net.lrn_k) == (21, jnp.bfloat16, 1, 1.0)
  assert model_lib.preset() == model_lib.AlexNet()
  with pytest.raises(ValueError, match="'nope'.*paper, bvlc, caffenet, torchvision"):
    model_lib.preset('nope')
  with pytest.raises(ValueError, match='nope'):
    model_lib.preprocess('nope', jnp.zeros((1, 4, 4, 3)))


# --------------------------------------------------------------------------------------------
# Caffe's LRN and the adaptive average pool against float64 numpy
# --------------------------------------------------------------------------------------------
def np_caffe_lrn(x, local_size=5, alpha=1e-4, beta=0.75, k=1.0):
  """Caffe's ACROSS_CHANNELS LRN (lrn_layer.cpp): alpha / local_size times the window's sum of
  squares, the window zero-padded at the channel edges and running over all channels."""
  x = x.astype(np.float64)
  pre = (local_size - 1) // 2
  padded = np.pad(x ** 2, [(0, 0)] * (x.ndim - 1) + [(pre, local_size - 1 - pre)])
  window = sum(padded[..., i:i + x.shape[-1]] for i in range(local_size))
  return x / (k + alpha / local_size * window) ** beta


@pytest.mark.parametrize('name', ['bvlc', 'caffenet'])
def test_caffe_lrn_across_all_channels_matches_numpy(name):
  net = model_lib.preset(name)
  # Conv-output scale (tens to hundreds): the window sum matters next to k.
  x = np.random.default_rng(0).normal(0, 150, (2, 5, 5, 96)).astype(np.float32)
  got = model_lib.local_response_norm(x, net.lrn_size, net.lrn_k, net.lrn_alpha, net.lrn_beta,
                                      net.lrn_groups)
  want = np_caffe_lrn(x)
  np.testing.assert_allclose(got, want, rtol=2e-6)
  # Windows cross the middle (the towers' boundary): per-tower windows give other numbers.
  assert not np.allclose(np_caffe_lrn(x[..., :48])[..., 46:], want[..., 46:48], rtol=1e-3)


def np_adaptive_avg_pool(x, size):
  """torch.nn.AdaptiveAvgPool2d's windows, one output at a time, in float64."""
  n, h, w, c = x.shape
  out = np.zeros((n, size, size, c))
  for i in range(size):
    for j in range(size):
      r0, r1 = (i * h) // size, -(-((i + 1) * h) // size)
      c0, c1 = (j * w) // size, -(-((j + 1) * w) // size)
      out[:, i, j] = x[:, r0:r1, c0:c1].astype(np.float64).mean(axis=(1, 2))
  return out


@pytest.mark.parametrize('height,width', [(6, 6), (7, 7), (13, 13), (1, 1), (3, 8)])
def test_adaptive_avg_pool_matches_numpy(height, width):
  """Map sizes at pool5 for inputs 224 (6), 255 (7), 447 (13) and 63 (1), and a non-square."""
  x = np.random.default_rng(height * 10 + width).normal(0, 1, (2, height, width, 5))
  got = model_lib.adaptive_avg_pool(jnp.asarray(x, jnp.float32), 6)
  np.testing.assert_allclose(got, np_adaptive_avg_pool(x, 6), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Whole presets against torch.nn modules with the published layer sequences
# --------------------------------------------------------------------------------------------
def _torch_module(name: str):
  """The published network, layer for layer, with NUM_CLASSES outputs."""
  nn = pytest.importorskip('torch', reason='needs torch: pip install -e ".[compare]"').nn
  if name == 'torchvision':  # torchvision/models/alexnet.py
    features = [nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten()]
    classifier = [nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
                  nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, NUM_CLASSES)]
    return nn.Sequential(*features, *classifier)
  # BVLC's deploy.prototxt: Caffe's LRN is torch's (alpha / size, k, across all channels).
  norm = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
  norm_pool = ([nn.MaxPool2d(3, 2), norm()] if name == 'caffenet'
               else [norm(), nn.MaxPool2d(3, 2)])
  return nn.Sequential(
      nn.Conv2d(3, 96, 11, 4), nn.ReLU(), *norm_pool,
      nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), *norm_pool,
      nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
      nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
      nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
      nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, NUM_CLASSES))


def _load_into_torch(module, params):
  """Our parameters into the torch module: HWIO -> OIHW, (in, out) -> (out, in), fc6's HWC
  flatten -> CHW."""
  torch = pytest.importorskip('torch')
  layers = [m for m in module if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  names = ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8']
  with torch.no_grad():
    for layer, name in zip(layers, names, strict=True):
      kernel = np.asarray(params[name]['kernel'])
      if kernel.ndim == 4:
        kernel = kernel.transpose(3, 2, 0, 1)
      elif name == 'fc6':
        kernel = kernel.reshape(6, 6, 256, -1).transpose(3, 2, 0, 1).reshape(-1, 9216)
      else:
        kernel = kernel.T
      layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
      layer.bias.copy_(torch.from_numpy(np.asarray(params[name]['bias'])))


@functools.lru_cache(maxsize=None)
def _preset_setup(name):
  model = model_lib.preset(name, num_classes=NUM_CLASSES)
  return model, weight_files.random_params(model, _input_size(name))


@pytest.mark.parametrize('name,size', [('torchvision', 224), ('torchvision', 255),
                                       ('bvlc', 227), ('caffenet', 227)])
def test_preset_matches_the_published_torch_layers(name, size):
  torch = pytest.importorskip('torch', reason='needs torch: pip install -e ".[compare]"')
  model, params = _preset_setup(name)
  pixels = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), np.uint8)
  images = np.asarray(model_lib.preprocess(name, pixels))
  got = np.asarray(jax.jit(model.apply)({'params': params}, images))
  module = _torch_module(name).eval()
  _load_into_torch(module, params)
  with torch.no_grad():
    want = module(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  assert np.abs(want).max() > 1.0  # weights that make every layer count
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize('name', ['bvlc', 'caffenet', 'torchvision'])
def test_auto_impls_match_xla_native_forward_and_gradient(name):
  """Each preset with the 'auto' implementations (the CPU's fast paths here) against XLA's
  own: the loss and every parameter's gradient ('paper': test_speed_options.py)."""
  # Caffe's presets at 99 = 227 - 4 * 32 (the same remainders at every stride and pool, a fifth
  # of the work); torchvision's at its 224, where its adaptive pool is the identity.
  size = 224 if name == 'torchvision' else 99
  model = model_lib.preset(name, num_classes=NUM_CLASSES)
  params = weight_files.random_params(model, size)
  images = jnp.asarray(np.random.default_rng(1).normal(0, 60, (1, size, size, 3)), jnp.float32)
  if name == 'torchvision':
    images = images / 60.0  # torchvision's input scale (mean/std normalised)
  labels = jnp.array([3])

  def value_and_grad(net):
    loss = lambda p: jnp.mean(steps_lib.cross_entropy(net.apply({'params': p}, images), labels))
    return jax.jit(jax.value_and_grad(loss))(params)

  loss_auto, grads_auto = value_and_grad(model)
  loss_xla, grads_xla = value_and_grad(model.clone(**model_lib.XLA_NATIVE_IMPLS,
                                                   lrn_grad='autodiff'))
  assert float(loss_xla) > 0.1
  np.testing.assert_allclose(float(loss_auto), float(loss_xla), rtol=1e-5)
  for layer, leaves in grads_xla.items():
    for leaf, want in leaves.items():
      want = np.asarray(want)
      np.testing.assert_allclose(grads_auto[layer][leaf], want, rtol=0,
                                 atol=1e-4 * np.abs(want).max(), err_msg=f'{layer}.{leaf}')


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------
def test_preprocess_matches_numpy():
  pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), np.uint8)
  x = pixels.astype(np.float64)
  want = {
      # The input pipeline's: 0..255 units minus ImageNet's mean pixel (0.485, 0.456, 0.406).
      'paper': x - 255.0 * np.array([0.485, 0.456, 0.406]),
      # Caffe's mean pixel, BGR (104.007, 116.669, 122.679), applied in RGB order.
      'bvlc': x - np.array([122.679, 116.669, 104.007]),
      'caffenet': x - np.array([122.679, 116.669, 104.007]),
      'torchvision': (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array(
          [0.229, 0.224, 0.225]),
  }
  for name, expected in want.items():
    for images in (pixels, pixels.astype(np.float32)):
      got = jax.jit(functools.partial(model_lib.preprocess, name))(images)
      assert got.dtype == jnp.float32
      np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4, err_msg=name)


def test_preset_inputs_are_documented():
  assert {name: (p.input_size, p.resize) for name, p in model_lib.PRESET_INPUTS.items()} == {
      'paper': (227, 256), 'bvlc': (227, 256), 'caffenet': (227, 256),
      'torchvision': (224, 256)}
  assert model_lib.PRESET_INPUTS['torchvision'].top1 == 56.522


# --------------------------------------------------------------------------------------------
# A preset is a config value of the main job (issue 13): any of them trains from scratch.
# --------------------------------------------------------------------------------------------
def _imagenet_model_config(**fields):
  from alexnet_jax.configs import imagenet
  config = imagenet.get_config()
  config.model.update(fields)
  return config


@pytest.mark.parametrize('name', sorted(model_lib.PRESETS))
def test_config_preset_builds_the_presets_network(name):
  from alexnet_jax import trainer
  built = trainer.build_model(_imagenet_model_config(preset=name), num_classes=7)
  expected = model_lib.preset(name, num_classes=7)
  for field in dataclasses.fields(model_lib.AlexNet):
    if field.name not in ('parent', 'name'):
      assert getattr(built, field.name) == getattr(expected, field.name), field.name


def test_config_fields_changed_from_the_papers_apply_on_top_of_the_preset():
  from alexnet_jax import trainer
  built = trainer.build_model(_imagenet_model_config(preset='bvlc', lrn_beta=0.5,
                                                     dropout_rate=0.25), num_classes=3)
  assert built.lrn_beta == 0.5 and built.dropout_rate == 0.25
  assert built.lrn_k == model_lib.PRESETS['bvlc']['lrn_k'] and built.lrn_groups == 1
  # '' is the paper's network.
  assert trainer.build_model(_imagenet_model_config(preset=''), num_classes=3).lrn_k == 2.0


def test_an_unknown_config_preset_is_one_clear_error():
  from alexnet_jax import trainer
  with pytest.raises(ValueError, match='config.model.preset must be one of paper, bvlc'):
    trainer.build_model(_imagenet_model_config(preset='vgg'), num_classes=3)


def test_the_main_job_trains_the_torchvision_preset_from_scratch(in_process_runs, monkeypatch):
  """A tiny run with --config.model.preset=torchvision: its checkpoint holds torchvision's
  layer widths, and weights.load of the workdir rebuilds that network."""
  import tiny_config
  from alexnet_jax import weights
  config = tiny_config.small_config(in_process_runs.folder, {'model.preset': 'torchvision',
                                                             'num_epochs': 1})
  workdir = in_process_runs.new_dir('torchvision_preset')
  result = in_process_runs.run(config, workdir, monkeypatch)
  assert result['stopped_by'] is None and result['step'] == tiny_config.STEPS_PER_EPOCH // 2
  model, variables = weights.load(workdir)
  assert model.conv_layers == model_lib.TORCHVISION_CONV_LAYERS and not model.use_lrn
  assert variables['params']['conv1']['kernel'].shape == (11, 11, 3, 64)
