"""The model's speed-only options compute the same function and the same gradients.

``conv_weight_grad='matmul'`` (kernel gradients as matrix products), ``conv1_impl=
'space_to_depth'``, ``lrn_grad='closed_form'`` (a hand-written LRN VJP) and
``pool_impl='strided_argmax'`` (a hand-written max-pool VJP) change how XLA:CPU
spends a training step (experiments/PERF.md), never the numbers beyond fp32 rounding: each is
checked here against the plain XLA-differentiated path it replaces.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from alexnet_jax import model as model_lib
from alexnet_jax import steps as steps_lib
from experiments.bench.model_options import max_pool_strided_slices
from experiments.lrn_formulations import WINDOW_SUMS

import weight_files

DN = ('NHWC', 'HWIO', 'NHWC')


def _reference_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=DN,
                                  precision=lax.Precision.HIGHEST)


def _assert_close(got, want, rtol=2e-5):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  scale = np.max(np.abs(want))
  assert scale > 0
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize('ksize,stride,padding', [
    (3, 1, ((1, 1), (1, 1))), (5, 1, ((2, 2), (2, 2))), (5, 4, ((0, 0), (0, 0))),
    (3, 2, ((0, 1), (2, 0))), (3, 1, 'SAME'), (4, 3, 'VALID')])
def test_matmul_weight_grad_equals_xla(ksize, stride, padding):
  rng = np.random.default_rng(ksize * 10 + stride)
  x = jnp.asarray(rng.normal(size=(2, 19, 17, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(ksize, ksize, 5, 7)), jnp.float32)
  strides = (stride, stride)
  out, vjp = jax.vjp(lambda a, k: model_lib.conv2d(a, k, strides, padding, 'matmul'), x, kernel)
  ref, ref_vjp = jax.vjp(lambda a, k: _reference_conv(a, k, strides, padding), x, kernel)
  _assert_close(out, ref)
  cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  for got, want in zip(vjp(cotangent), ref_vjp(cotangent)):
    _assert_close(got, want)


@pytest.mark.parametrize('ksize', [(3, 3), (4, 2), (1, 1)])
@pytest.mark.parametrize('weight_grad', ['xla', 'matmul'])
def test_valid_unit_stride_conv_equals_reference(ksize, weight_grad):
  """VALID stride-1 convolutions run as the padded convolution, cropped (conv1 in blocks)."""
  rng = np.random.default_rng(sum(ksize))
  x = jnp.asarray(rng.normal(size=(2, 11, 9, 6)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=ksize + (6, 5)), jnp.float32)
  pads = ((0, 0), (0, 0))
  out, vjp = jax.vjp(lambda a, k: model_lib.conv2d(a, k, (1, 1), pads, weight_grad), x, kernel)
  ref, ref_vjp = jax.vjp(lambda a, k: _reference_conv(a, k, (1, 1), pads), x, kernel)
  assert out.shape == (2, 12 - ksize[0], 10 - ksize[1], 5)
  _assert_close(out, ref)
  cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  for got, want in zip(vjp(cotangent), ref_vjp(cotangent)):
    _assert_close(got, want)


@pytest.mark.parametrize('ksize,padding', [
    ((5, 5), ((2, 2), (2, 2))), ((3, 3), ((0, 0), (0, 0))), ((3, 2), ((1, 0), (0, 2))),
    ((1, 1), ((0, 0), (0, 0)))])
@pytest.mark.parametrize('weight_grad', ['xla', 'matmul'])
def test_padded_output_narrow_conv_equals_reference(ksize, padding, weight_grad):
  """Narrow convolutions and their input gradients, computed with extra padding, cropped."""
  rng = np.random.default_rng(sum(ksize) + len(weight_grad))
  x = jnp.asarray(rng.normal(size=(2, 12, 10, 7)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=ksize + (7, 6)), jnp.float32)
  fn = lambda a, k: model_lib.conv2d(a, k, (1, 1), padding, weight_grad, 'padded_output')
  out, vjp = jax.vjp(fn, x, kernel)
  ref, ref_vjp = jax.vjp(lambda a, k: _reference_conv(a, k, (1, 1), padding), x, kernel)
  _assert_close(out, ref)
  cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  for got, want in zip(vjp(cotangent), ref_vjp(cotangent)):
    _assert_close(got, want)
  if ksize != (1, 1):
    # What sends it to XLA:CPU's multi-threaded path: the narrow convolutions it runs (the
    # forward, and with 'matmul' the input gradient too) have a larger output than input.
    def step(a, k, c):
      y, pullback = jax.vjp(fn, a, k)
      return y, pullback(c)
    traced = fn if weight_grad == 'xla' else step
    args = (x, kernel) if weight_grad == 'xla' else (x, kernel, cotangent)
    convs = [e for e in jax.make_jaxpr(traced)(*args).eqns
             if e.primitive.name == 'conv_general_dilated']
    assert len(convs) == (1 if weight_grad == 'xla' else 2)  # 'matmul': dK is matmuls
    assert all(e.outvars[0].aval.shape[1] > e.invars[0].aval.shape[1] for e in convs)
  with pytest.raises(ValueError, match='padded_output'):
    model_lib.conv2d(x, kernel, (1, 1), padding, weight_grad, 'eigen')


def test_wide_convolutions_are_left_as_they_are():
  x = jnp.ones((1, 9, 9, 4), jnp.float32)
  kernel = jnp.ones((3, 3, 4, model_lib.NARROW_CONV_CHANNELS + 1), jnp.float32)
  convs = [e for e in jax.make_jaxpr(
      lambda a: model_lib.conv2d(a, kernel, (1, 1), ((1, 1), (1, 1)), 'xla', 'padded_output')
  )(x).eqns if e.primitive.name == 'conv_general_dilated']
  assert [e.outvars[0].aval.shape for e in convs] == [(1, 9, 9, 97)]


def test_matmul_weight_grad_of_grouped_conv_and_bf16():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 8)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32)
  pad = ((1, 1), (1, 1))
  f = lambda wg: lambda k: jnp.sum(jnp.sin(model_lib.grouped_conv(x, k, (1, 1), pad, 2,
                                                                   'split', wg)))
  _assert_close(jax.grad(f('matmul'))(kernel), jax.grad(f('xla'))(kernel))
  # bf16 compute: the kernel gradient keeps the kernel's dtype.
  kb = kernel.astype(jnp.bfloat16)
  xb = x[..., :4].astype(jnp.bfloat16)
  g = jax.grad(lambda k: jnp.sum(model_lib.conv2d(xb, k, (1, 1), pad, 'matmul').astype(
      jnp.float32)))(kb)
  assert g.dtype == jnp.bfloat16


def test_unknown_weight_grad_says_what_to_use():
  with pytest.raises(ValueError, match="'xla' or 'matmul'"):
    model_lib.conv2d(jnp.zeros((1, 5, 5, 1)), jnp.zeros((3, 3, 1, 1)), (1, 1), 'VALID', 'fast')


@pytest.mark.parametrize('size,ksize,stride', [(227, 11, 4), (35, 11, 4), (30, 5, 3), (9, 2, 2)])
@pytest.mark.parametrize('weight_grad,narrow', [('xla', 'xla'), ('matmul', 'xla'),
                                                ('matmul', 'padded_output')])
def test_space_to_depth_conv_equals_strided_conv(size, ksize, stride, weight_grad, narrow):
  rng = np.random.default_rng(size + ksize)
  batch = 1 if size > 100 else 2
  x = jnp.asarray(rng.normal(size=(batch, size, size + 1, 3)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(ksize, ksize, 3, 4)), jnp.float32)
  strides = (stride, stride)
  out, vjp = jax.vjp(
      lambda a, k: model_lib.space_to_depth_conv(a, k, stride, weight_grad, narrow), x, kernel)
  ref, ref_vjp = jax.vjp(lambda a, k: _reference_conv(a, k, strides, 'VALID'), x, kernel)
  _assert_close(out, ref)
  cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  for got, want in zip(vjp(cotangent), ref_vjp(cotangent)):
    _assert_close(got, want)


@pytest.mark.parametrize('impl', ['reduce_window', 'matmul', 'shifted_slices', 'cumsum'])
@pytest.mark.parametrize('size,groups,beta', [(5, 2, 0.75), (4, 2, 0.75), (6, 1, 0.75),
                                              (3, 4, 0.5)])
def test_closed_form_lrn_gradient_equals_autodiff(impl, size, groups, beta):
  rng = np.random.default_rng(size * groups)
  # Large inputs: alpha * window sum ~ k, the nonlinear regime.
  x = jnp.asarray(rng.normal(0, 100, (2, 3, 3, 16)), jnp.float32)
  read_out = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def loss(grad):
    return lambda a: jnp.sum(read_out * model_lib.local_response_norm(
        a, size=size, beta=beta, groups=groups, impl=WINDOW_SUMS[impl], grad=grad))

  _assert_close(jax.grad(loss('closed_form'))(x), jax.grad(loss('autodiff'))(x))
  _assert_close(model_lib.local_response_norm(x, size=size, beta=beta, groups=groups,
                                              impl=WINDOW_SUMS[impl], grad='closed_form'),
                model_lib.local_response_norm(x, size=size, beta=beta, groups=groups,
                                              impl=WINDOW_SUMS[impl]))


def test_closed_form_lrn_gradient_matches_finite_differences():
  """Independent of autodiff: central differences in float64."""
  rng = np.random.default_rng(7)
  x = rng.normal(0, 150, (1, 1, 2, 8))
  read_out = rng.normal(size=x.shape)
  with jax.enable_x64(True):
    f = lambda a: jnp.sum(read_out * model_lib.local_response_norm(a, groups=2,
                                                                   grad='closed_form'))
    got = np.asarray(jax.grad(f)(jnp.asarray(x)))
    want = np.zeros_like(x)
    eps = 1e-4
    for idx in np.ndindex(x.shape):
      step = np.zeros_like(x)
      step[idx] = eps
      want[idx] = (float(f(jnp.asarray(x + step))) - float(f(jnp.asarray(x - step)))) / (2 * eps)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())


@pytest.mark.parametrize('shape,window,stride', [
    ((2, 55, 55, 3), 3, 2), ((2, 27, 27, 4), 3, 2), ((2, 13, 13, 5), 3, 2), ((1, 8, 9, 2), 3, 2),
    ((2, 17, 16, 3), 2, 2), ((2, 17, 16, 3), 3, 3), ((2, 17, 16, 3), 5, 2), ((2, 17, 16, 3), 2, 3)])
def test_strided_argmax_pool_equals_reduce_window(shape, window, stride):
  rng = np.random.default_rng(sum(shape) + window * stride)
  # A permutation: no ties, one maximum per window.
  x = jnp.asarray(rng.permutation(np.prod(shape)).reshape(shape) / np.prod(shape), jnp.float32)
  out, vjp = jax.vjp(lambda a: model_lib.max_pool(a, window, stride, 'strided_argmax'), x)
  ref, ref_vjp = jax.vjp(lambda a: model_lib.max_pool(a, window, stride, 'reduce_window'), x)
  np.testing.assert_array_equal(out, ref)
  cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  np.testing.assert_allclose(vjp(cotangent)[0], ref_vjp(cotangent)[0], rtol=0, atol=1e-6)


def test_strided_argmax_pool_keeps_its_window_index():
  """The backward reads the stored argmax instead of redoing the compares (PERF.md, 12).

  XLA:CPU drops optimization barriers, so the index goes through a conditional, which XLA
  neither fuses nor removes; without it the pooling backward took 3-6x as long in the step.
  """
  x = jnp.ones((2, 9, 9, 3), jnp.float32)
  grad = jax.jit(jax.grad(lambda a: jnp.sum(model_lib.max_pool(a, impl='strided_argmax') ** 2)))
  assert 'conditional' in grad.lower(x).compile().as_text()


def test_strided_argmax_pool_routes_ties_like_reduce_window():
  """All-equal windows (ReLU zeros): the gradient goes to each window's first element."""
  x = jnp.zeros((1, 7, 7, 2), jnp.float32)
  _, vjp = jax.vjp(lambda a: model_lib.max_pool(a, impl='strided_argmax'), x)
  _, ref_vjp = jax.vjp(lambda a: model_lib.max_pool(a, impl='reduce_window'), x)
  cotangent = jnp.arange(1.0, 19.0).reshape(1, 3, 3, 2)
  np.testing.assert_array_equal(vjp(cotangent)[0], ref_vjp(cotangent)[0])
  with pytest.raises(ValueError, match='strided_argmax'):
    model_lib.max_pool(x, impl='argmax')


def test_bad_lrn_grad_says_what_to_use():
  with pytest.raises(ValueError, match='closed_form'):
    model_lib.local_response_norm(jnp.ones((1, 4)), grad='analytic')


SPEED_OFF = dict(conv_weight_grad='xla', conv1_impl='direct', lrn_grad='autodiff',
                 pool_impl='reduce_window')
SPEED_ON = dict(conv_weight_grad='matmul', conv1_impl='space_to_depth', lrn_grad='closed_form',
                pool_impl='strided_argmax')


def test_whole_model_loss_and_gradients_agree(lrn_after_pool=False):
  """The AlexNet loss and every parameter's gradient, all speed options on versus off (the
  seed's pool-then-LRN order is checked against PyTorch in test_torch_twin.py)."""
  rng = np.random.default_rng(1)
  base = model_lib.AlexNet(num_classes=10, lrn_after_pool=lrn_after_pool)
  # 99 = 227 - 4 * 32: the same remainders at every stride (conv1's space-to-depth blocks, each
  # pool's windows: 23 -> 11, 11 -> 5, 5 -> 2), a fifth of the work, a 2x2 map before fc6.
  size = 99
  # He-scaled weights and pixel-scale input: every layer (and LRN's nonlinearity) matters.
  params = jax.tree_util.tree_map(jnp.asarray, weight_files.random_params(base, size, seed=1))
  images = jnp.asarray(rng.normal(0, 60, (2, size, size, 3)), jnp.float32)
  labels = jnp.array([1, 7])

  def value_and_grad(options):
    model = base.clone(**options)
    loss = lambda p: jnp.mean(steps_lib.cross_entropy(model.apply({'params': p}, images),
                                                      labels))
    return jax.jit(jax.value_and_grad(loss))(params)

  loss_on, grads_on = value_and_grad(SPEED_ON)
  loss_off, grads_off = value_and_grad(SPEED_OFF)
  assert float(loss_off) > 1.0
  np.testing.assert_allclose(float(loss_on), float(loss_off), rtol=1e-5)
  for layer in grads_off:
    for leaf in ('kernel', 'bias'):
      _assert_close(grads_on[layer][leaf], grads_off[layer][leaf], rtol=1e-4)


def test_space_to_depth_needs_an_ungrouped_conv():
  conv = model_lib.TowerConv(4, (3, 3), (2, 2), padding=1, groups=2, space_to_depth=True)
  with pytest.raises(ValueError, match='space_to_depth'):
    conv.init(jax.random.key(0), jnp.zeros((1, 9, 9, 2)))


def test_padded_space_to_depth_conv_equals_the_direct_one():
  """A padded strided conv (torchvision's conv1 pads by 2) is padded first, then cut in blocks."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 23, 23, 3)), jnp.float32)
  direct = model_lib.TowerConv(8, (11, 11), (4, 4), padding=2)
  variables = direct.init(jax.random.key(0), x)
  blocks = direct.clone(space_to_depth=True)
  _assert_close(blocks.apply(variables, x), direct.apply(variables, x))


def test_auto_implementations_follow_the_backend(monkeypatch):
  """'auto' takes CPU_IMPLS on the CPU and XLA's own paths elsewhere; explicit values win."""
  assert model_lib.AlexNet().impls() == {**model_lib.CPU_IMPLS, 'lrn_impl': 'reduce_window',
                                         'lrn_grad': 'closed_form'}
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert model_lib.AlexNet().impls() == {**model_lib.XLA_NATIVE_IMPLS,
                                         'lrn_impl': 'reduce_window', 'lrn_grad': 'closed_form'}
  chosen = model_lib.AlexNet(pool_impl='strided_argmax', conv1_impl='space_to_depth').impls()
  assert chosen['pool_impl'] == 'strided_argmax' and chosen['conv1_impl'] == 'space_to_depth'
  assert chosen['conv_impl'] == model_lib.XLA_NATIVE_IMPLS['conv_impl']
  # An experiment's formulation is recorded by where it lives (impls() goes into JSON files).
  chosen = model_lib.AlexNet(pool_impl=max_pool_strided_slices,
                             lrn_impl=WINDOW_SUMS['matmul']).impls()
  assert chosen['pool_impl'] == 'experiments.bench.model_options.max_pool_strided_slices'
  assert chosen['lrn_impl'] == 'experiments.lrn_formulations.window_sum_matmul'
