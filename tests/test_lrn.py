"""Tests of local response normalisation against the paper's formula (float64 numpy loops),
TensorFlow's and PyTorch's layers, the towers (groups=2) and gradients.

b[c] = a[c] / (k + alpha * sum_{j=max(0, c-n/2)}^{min(N-1, c+n/2)} a[j]^2) ** beta
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import LocalResponseNorm, local_response_norm
from experiments.lrn_formulations import WINDOW_SUMS

# The package's 'reduce_window' and the experiment's window sums (passed as functions).
IMPLS = ('reduce_window', 'matmul', 'shifted_slices', 'cumsum')
SCALES = (1.0, 10.0, 100.0, 1000.0)  # At 1 the alpha term is invisible; at 1000 it dominates.
PAPER = dict(k=2.0, alpha=1e-4, beta=0.75)


def reference_lrn(a, size=5, k=2.0, alpha=1e-4, beta=0.75, groups=1):
  """The formula, one output value at a time, in float64 (windows clipped to the group)."""
  a = np.asarray(a, np.float64)
  flat = a.reshape(-1, a.shape[-1])
  channels = flat.shape[1]
  per = channels // groups
  before, after = size // 2, (size - 1) // 2  # PyTorch/Caffe for even sizes.
  out = np.empty_like(flat)
  for i in range(flat.shape[0]):
    for c in range(channels):
      first, last = (c // per) * per, (c // per) * per + per - 1
      total = 0.0
      for j in range(max(first, c - before), min(last, c + after) + 1):
        total += flat[i, j] ** 2
      out[i, c] = flat[i, c] / (k + alpha * total) ** beta
  return out.reshape(a.shape)


def _input(shape, scale, seed=0):
  return np.random.default_rng(seed).normal(0.0, scale, shape).astype(np.float32)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('size', [5, 3, 4])
@pytest.mark.parametrize('groups', [1, 2])
def test_matches_the_formula(impl, size, groups):
  for scale in SCALES:
    x = _input((2, 3, 2, 16), scale, seed=size)
    got = local_response_norm(jnp.asarray(x), size=size, groups=groups, impl=WINDOW_SUMS[impl],
                              **PAPER)
    want = reference_lrn(x, size=size, groups=groups, **PAPER)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=0, err_msg=f'scale {scale}')


def test_alpha_matters_at_large_scale():
  # Guards the test above: at scale 1000 the normaliser is far from k ** beta.
  x = _input((1, 1, 1, 16), 1000.0)
  out = reference_lrn(x)
  assert np.max(np.abs(out / (x / 2.0 ** 0.75) - 1)) > 0.5


def test_non_default_beta_and_module():
  x = _input((2, 2, 2, 12), 100.0)
  want = reference_lrn(x, size=5, k=1.0, alpha=2e-4, beta=0.5, groups=2)
  layer = LocalResponseNorm(size=5, k=1.0, alpha=2e-4, beta=0.5, groups=2)
  got = layer.apply({}, jnp.asarray(x))
  np.testing.assert_allclose(got, want, rtol=2e-6)


def test_groups_two_is_each_half_alone():
  x = jnp.asarray(_input((2, 5, 5, 96), 300.0))
  both = local_response_norm(x, groups=2)
  halves = jnp.concatenate([local_response_norm(x[..., :48]), local_response_norm(x[..., 48:])],
                           axis=-1)
  np.testing.assert_allclose(both, halves, rtol=1e-6)
  # And it is not the ungrouped layer: channels 46..49 see across the boundary there.
  assert not np.allclose(both, local_response_norm(x, groups=1), rtol=1e-4)


def test_bfloat16_input_keeps_dtype_and_alpha():
  x = _input((2, 3, 3, 16), 1000.0)
  got = local_response_norm(jnp.asarray(x, jnp.bfloat16))
  assert got.dtype == jnp.bfloat16
  want = reference_lrn(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64))
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-2)


def test_errors_say_what_to_do():
  with pytest.raises(ValueError, match='equal groups'):
    local_response_norm(jnp.ones((1, 10)), groups=3)
  with pytest.raises(ValueError, match='size must be at least 1'):
    local_response_norm(jnp.ones((1, 10)), size=0)
  # The other formulations are the experiment's functions, no longer names the package knows.
  with pytest.raises(ValueError, match='experiments/lrn_formulations.py'):
    local_response_norm(jnp.ones((1, 10)), impl='matmul')


@pytest.mark.parametrize('scale', [1.0, 1000.0])
def test_matches_tensorflow(scale):
  tf = pytest.importorskip('tensorflow')
  tf.config.set_visible_devices([], 'GPU')
  x = _input((2, 4, 4, 32), scale)
  for size in (5, 3):
    want = tf.nn.local_response_normalization(x, depth_radius=size // 2, bias=2.0, alpha=1e-4,
                                              beta=0.75).numpy()
    got = local_response_norm(jnp.asarray(x), size=size, **PAPER)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize('scale', [1.0, 1000.0])
def test_matches_pytorch_with_alpha_times_size(scale):
  torch = pytest.importorskip('torch', reason='torch is the optional `compare` extra')
  x = _input((2, 4, 4, 32), scale)
  nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  for size in (5, 3, 4):  # 4: the even window, one more channel before than after.
    layer = torch.nn.LocalResponseNorm(size, alpha=1e-4 * size, beta=0.75, k=2.0)
    want = layer(nchw).numpy().transpose(0, 2, 3, 1)
    got = local_response_norm(jnp.asarray(x), size=size, **PAPER)
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f'size {size}')


def _finite_difference_grad(f, x, eps):
  """Central differences of a scalar float64 function, one coordinate at a time."""
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[idx] = eps
    grad[idx] = (f(x + step) - f(x - step)) / (2 * eps)
  return grad


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('scale', [1.0, 300.0])
def test_gradient_matches_finite_differences(impl, scale):
  rng = np.random.default_rng(3)
  x = rng.normal(0.0, scale, (1, 2, 1, 8))
  weights = rng.normal(size=x.shape)  # A random linear read-out: the gradient is a VJP.
  f64 = lambda a: float(np.sum(weights * reference_lrn(a, groups=2)))
  want = _finite_difference_grad(f64, x, eps=1e-5 * scale)

  def loss(a):
    return jnp.sum(jnp.asarray(weights, a.dtype) * local_response_norm(a, groups=2,
                                                                       impl=WINDOW_SUMS[impl]))

  with jax.enable_x64(True):
    got64 = jax.grad(loss)(jnp.asarray(x, jnp.float64))
  assert got64.dtype == jnp.float64
  np.testing.assert_allclose(got64, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
  got32 = jax.grad(loss)(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
