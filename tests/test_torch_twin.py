"""The PyTorch twin computes what alexnet_jax computes: an independent check of the JAX model.

With the same weights (converted by ``load_jax_params``) the eval-mode logits and the gradients
of the softmax cross-entropy agree to fp32 rounding. The weights are rescaled (He-like, random
biases) and the input is large so that every part matters: the paper's N(0, 0.01) init leaves
logits almost independent of the conv layers, and LRN only departs from a constant scale when
``alpha * sum(a^2)`` is comparable to ``k``. Tests at the end show that the comparison fails
when a known mistake is made (towers mixed by LRN, fc6 rows not permuted).
"""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    'torch', reason='PyTorch twin tests need torch: pip install -e ".[compare]"')

from alexnet_jax import model as model_lib  # noqa: E402
from alexnet_jax.ops import lrn as lrn_ops  # noqa: E402
from experiments.bench import torch_twin  # noqa: E402
from alexnet_jax import steps as steps_lib  # noqa: E402

NUM_CLASSES = 10
# Relative tolerance of the max abs difference against the max abs value (fp32 arithmetic in
# different orders; observed ~1e-6 for logits and every gradient).
RTOL = 2e-4


def _rescaled_params(rng_seed: int, params):
  """Weights N(0, 2/fan_in) and biases N(0, 0.1): activations keep their size through depth."""
  rng = np.random.default_rng(rng_seed)
  out = {}
  for name, leaves in params.items():
    shape = leaves['kernel'].shape
    fan_in = int(np.prod(shape[:-1]))
    out[name] = {
        'kernel': rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in)),
        'bias': rng.standard_normal(leaves['bias'].shape, np.float32) * np.float32(0.1),
    }
  return out


@functools.lru_cache(maxsize=None)
def _setup(lrn_after_pool: bool, seed: int = 0):
  """(model, params, images, labels), built once per setting for the whole module."""
  model = model_lib.AlexNet(num_classes=NUM_CLASSES, lrn_after_pool=lrn_after_pool)
  # Shapes only: the values are replaced below, and a real init of 60M weights is slow.
  shapes = jax.eval_shape(model.init, jax.random.key(seed), jnp.zeros((1, 227, 227, 3)))
  params = _rescaled_params(seed, shapes['params'])
  # Pixel-like scale: conv1 outputs of tens, so alpha * window sum ~ k and LRN is nonlinear.
  images = np.random.default_rng(seed + 1).normal(0, 60, (2, 227, 227, 3)).astype(np.float32)
  labels = np.array([3, 7], np.int32)
  return model, params, images, labels


def _twin(params, lrn_after_pool: bool, lrn_groups: int = 2):
  twin = torch_twin.AlexNetTwin(num_classes=NUM_CLASSES, lrn_after_pool=lrn_after_pool,
                                lrn_groups=lrn_groups)
  torch_twin.load_jax_params(twin, params)
  return twin.eval()


@functools.lru_cache(maxsize=None)
def _jax_forward(model):
  return jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))


def _jax_logits(model, params, images):
  return np.asarray(_jax_forward(model)(params, images))


def _torch_logits(twin, images):
  with torch.no_grad():
    return twin(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _rel_err(a, b) -> float:
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize('lrn_after_pool', [False, True])
def test_logits_match(lrn_after_pool):
  model, params, images, _ = _setup(lrn_after_pool)
  jax_logits = _jax_logits(model, params, images)
  torch_logits = _torch_logits(_twin(params, lrn_after_pool), images)
  assert np.max(np.abs(jax_logits)) > 1.0, 'logits too small to compare meaningfully'
  assert _rel_err(torch_logits, jax_logits) < RTOL


def test_lrn_is_active_in_the_comparison():
  """The setting exercises LRN: switching it off changes the logits far beyond the tolerance."""
  model, params, images, _ = _setup(False)
  with_lrn = _jax_logits(model, params, images)
  without = _jax_logits(model.clone(use_lrn=False), params, images)
  assert _rel_err(without, with_lrn) > 100 * RTOL


def test_gradients_match():
  """Eval-mode cross-entropy gradients of every parameter agree (dropout off on both sides).

  conv1 runs 'direct', a strided convolution like PyTorch's: its space-to-depth form (a CPU
  speed option, tested against this one in test_speed_options) rounds conv1's outputs
  differently in the last bits, and on these noise images that is enough to flip one max-pool
  near-tie in pool2, which moves conv1's and conv2's kernel gradients by ~1% (PERF.md, 7b).
  The comparison is of the network, not of fp32 summation orders.
  """
  model, params, images, labels = _setup(False)
  model = model.clone(conv1_impl='direct')

  def loss(p):
    logits = model.apply({'params': p}, images, train=False)
    return jnp.mean(steps_lib.cross_entropy(logits, labels))

  jax_grads = jax.jit(jax.grad(loss))(params)
  twin = _twin(params, False)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  torch.nn.functional.cross_entropy(twin(x), torch.from_numpy(labels).long()).backward()
  torch_grads = torch_twin.torch_grads_as_jax(twin)
  for name in model_lib.LAYER_NAMES:
    for leaf in ('kernel', 'bias'):
      want = np.asarray(jax_grads[name][leaf])
      got = torch_grads[name][leaf]
      assert got.shape == want.shape, (name, leaf)
      assert _rel_err(got, want) < RTOL, (name, leaf, _rel_err(got, want))


def test_lrn_across_towers_is_detected():
  """torch's LRN over all channels (windows crossing the towers) is not the paper's network."""
  model, params, images, _ = _setup(False)
  jax_logits = _jax_logits(model, params, images)
  crossing = _torch_logits(_twin(params, False, lrn_groups=1), images)
  assert _rel_err(crossing, jax_logits) > 10 * RTOL


def test_fc6_permutation_is_needed():
  """Loading fc6 without the HWC -> CHW row permutation gives different logits."""
  model, params, images, _ = _setup(False)
  jax_logits = _jax_logits(model, params, images)
  twin = _twin(params, False)
  with torch.no_grad():
    twin.fc6.weight.copy_(torch.from_numpy(np.ascontiguousarray(params['fc6']['kernel'].T)))
  assert _rel_err(_torch_logits(twin, images), jax_logits) > 10 * RTOL


def test_fc6_permutation_round_trip():
  kernel = np.arange(6 * 6 * 4 * 2, dtype=np.float32).reshape(6 * 6 * 4, 2)
  chw = torch_twin.fc6_hwc_to_chw(kernel)
  # Row (c, h, w) of the CHW kernel is row (h, w, c) of the HWC one.
  for c, h, w in [(0, 0, 0), (3, 1, 2), (1, 5, 5), (2, 4, 0)]:
    np.testing.assert_array_equal(chw[c * 36 + h * 6 + w], kernel[(h * 6 + w) * 4 + c])


def test_twin_train_step_runs():
  """The twin's SGD: weights decay, biases do not (checked with a zero gradient)."""
  twin = torch_twin.AlexNetTwin(num_classes=NUM_CLASSES)
  opt = torch_twin.make_sgd(twin, learning_rate=0.1)
  before_w = twin.conv1.weight.detach().clone()
  before_b = twin.conv2.bias.detach().clone()
  for p in twin.parameters():
    p.grad = torch.zeros_like(p)
  opt.step()
  torch.testing.assert_close(twin.conv1.weight, before_w * (1 - 0.1 * 5e-4))
  torch.testing.assert_close(twin.conv2.bias, before_b)


def test_twin_geometry_is_the_models_layer_table():
  """The twin's PyTorch-style conv table is alexnet_jax.model's table (in channels chained)."""
  channels = 3
  for (name, features, ksize, stride, pad, groups), twin_row in zip(model_lib.CONV_LAYERS,
                                                                   torch_twin.CONV_LAYERS):
    assert twin_row == (name, channels, features, ksize, stride, pad, groups)
    channels = features
  assert len(torch_twin.CONV_LAYERS) == len(model_lib.CONV_LAYERS)


def test_caffe_lrn_constants_match_the_jax_lrn():
  """LRN with Caffe's k=1 and alpha 1e-4 / 5 on a sum (bvlc_alexnet), across all channels."""
  x = np.random.default_rng(0).normal(0, 30, (2, 13, 13, 16)).astype(np.float32)
  want = np.asarray(lrn_ops.local_response_norm(x, 5, 1.0, 1e-4 / 5, 0.75, groups=1))
  norm = torch_twin.GroupedLRN(5, 1e-4 / 5, 0.75, 1.0, groups=1)
  got = norm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
  assert _rel_err(want / x, np.ones_like(x)) > 10 * RTOL  # the normalisation is not trivial
  assert _rel_err(got, want) < RTOL


def test_twin_imports_no_jax_and_sizes_fc6_from_its_input():
  """A PyTorch benchmark worker's memory is PyTorch's alone: building the twin imports no JAX.
  fc6's input side follows the input (hand-computed: 6 at the paper's 227, 1 at 67)."""
  code = ('import sys; from experiments.bench import torch_twin; '
          'sides = [torch_twin.AlexNetTwin(input_size=s).fc6_side for s in (227, 67)]; '
          'assert sides == [6, 1], sides; '
          'assert "jax" not in sys.modules, "building the twin imported JAX"')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=120,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
