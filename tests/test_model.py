"""Tests of alexnet_jax.model: shapes, parameter layout, a float64 numpy twin of the whole
forward pass, the grouped convolution and pooling implementations, init, dropout, bf16, options.

One batch of 2 images and one jitted apply per configuration (module fixtures): a full AlexNet
compile costs seconds on a 2-core CPU.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from alexnet_jax import model as model_lib
from alexnet_jax import unrolled_threefry
from alexnet_jax.model import AlexNet, count_params, grouped_conv, max_pool, predict_probabilities
from experiments.bench.model_options import max_pool_strided_slices

BATCH = 2
# (name, params) of the paper's table; the total is the paper's 60,965,224.
PAPER_PARAMS = {'conv1': 34_944, 'conv2': 307_456, 'conv3': 885_120, 'conv4': 663_936,
                'conv5': 442_624, 'fc6': 37_752_832, 'fc7': 16_781_312, 'fc8': 4_097_000}
# The documented layout: conv kernels HWIO, grouped ones (kh, kw, in/2, out); dense (in, out).
LAYOUT = {
    'conv1': (11, 11, 3, 96), 'conv2': (5, 5, 48, 256), 'conv3': (3, 3, 256, 384),
    'conv4': (3, 3, 192, 384), 'conv5': (3, 3, 192, 256), 'fc6': (9216, 4096),
    'fc7': (4096, 4096), 'fc8': (4096, 1000),
}


# --------------------------------------------------------------------------------------------
# A float64 numpy AlexNet, written from the paper (independent of the module's code paths)
# --------------------------------------------------------------------------------------------
def np_conv(x, kernel, stride, pad, groups):
  """NHWC x HWIO convolution with groups, by explicit patches and a matrix product."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, cin_g, cout = kernel.shape
  cout_g = cout // groups
  outs = []
  for g in range(groups):
    xg = x[..., g * cin_g:(g + 1) * cin_g]
    patches = np.lib.stride_tricks.sliding_window_view(xg, (kh, kw), axis=(1, 2))
    patches = patches[:, ::stride, ::stride]  # (N, OH, OW, Cin_g, kh, kw)
    kg = kernel[..., g * cout_g:(g + 1) * cout_g].transpose(2, 0, 1, 3)  # (Cin_g, kh, kw, O)
    outs.append(np.tensordot(patches, kg, axes=([3, 4, 5], [0, 1, 2])))
  return np.concatenate(outs, axis=-1)


def np_lrn(x, size=5, k=2.0, alpha=1e-4, beta=0.75, groups=2):
  """The paper's formula, each channel's window clipped to its group."""
  channels = x.shape[-1]
  per = channels // groups
  out = np.empty_like(x)
  for c in range(channels):
    g0 = (c // per) * per
    lo, hi = max(g0, c - size // 2), min(g0 + per - 1, c + (size - 1) // 2)
    out[..., c] = x[..., c] / (k + alpha * np.sum(x[..., lo:hi + 1] ** 2, axis=-1)) ** beta
  return out


def np_pool(x):
  windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2]
  return windows.max(axis=(-2, -1))


def np_alexnet(params, images, lrn_after_pool=False, use_lrn=True):
  """Logits and named activations of the paper's network in float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  relu = lambda a: np.maximum(a, 0.0)
  lrn = np_lrn if use_lrn else (lambda a: a)
  acts = {}
  x = np.asarray(images, np.float64)
  # (name, stride, padding, groups); kernel sizes come from the parameters.
  for name, stride, pad, groups in [('conv1', 4, 0, 1), ('conv2', 1, 2, 2), ('conv3', 1, 1, 1),
                                    ('conv4', 1, 1, 2), ('conv5', 1, 1, 2)]:
    x = np_conv(x, p[name]['kernel'], stride, pad, groups) + p[name]['bias']
    acts[name] = x
    x = relu(x)
    if name in ('conv1', 'conv2'):
      x = lrn(np_pool(x)) if lrn_after_pool else np_pool(lrn(x))
  x = np_pool(x)
  acts['pool5'] = x
  x = x.reshape(x.shape[0], -1)  # HWC order.
  for name in ('fc6', 'fc7'):
    x = x @ p[name]['kernel'] + p[name]['bias']
    acts[name] = x
    x = relu(x)
  logits = x @ p['fc8']['kernel'] + p['fc8']['bias']
  return logits, acts


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------------------------
# Fixtures: one init and one compile per configuration
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def model():
  return AlexNet()


@pytest.fixture(scope='module')
def variables(model):
  return unrolled_threefry.jit(model.init)(jax.random.key(0), jnp.zeros((1, 227, 227, 3)))


@pytest.fixture(scope='module')
def images():
  # Mean-subtracted pixel scale (about +-100): large enough for LRN's alpha term to matter.
  rng = np.random.default_rng(1)
  return jnp.asarray(rng.normal(0.0, 60.0, (BATCH, 227, 227, 3)), jnp.float32)


def _make_apply(module, traces=None):
  """A jitted apply returning logits, captured module outputs and fc6's input.

  Each trace appends ``(images.shape, train)`` to ``traces`` when given.
  """

  @functools.partial(jax.jit, static_argnames='train')
  def apply(variables, images, rng, train):
    if traces is not None:
      traces.append((images.shape, train))
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
      if context.module.name == 'fc6' and context.method_name == '__call__':
        seen['fc6_input'] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      logits, state = module.apply(variables, images, train=train, rngs={'dropout': rng},
                                   capture_intermediates=True)
    # Modules' outputs (dicts); the network's own sown taps (features.extract) are tuples.
    acts = {k: v['__call__'][0] for k, v in state['intermediates'].items()
            if k != '__call__' and isinstance(v, dict)}
    return logits, acts, seen['fc6_input']

  return apply


@pytest.fixture(scope='module')
def apply_traces():
  return []


@pytest.fixture(scope='module')
def apply_fn(model, apply_traces):
  return _make_apply(model, apply_traces)


@pytest.fixture(scope='module')
def eval_out(apply_fn, variables, images):
  return apply_fn(variables, images, jax.random.key(0), train=False)


# --------------------------------------------------------------------------------------------
# Shapes and parameter layout
# --------------------------------------------------------------------------------------------
def test_intermediate_shapes_follow_the_table(model):
  shapes = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and context.module.name is not None:
      shapes[context.module.name] = (args[0].shape[1:], out.shape[1:])
    return out

  x = jax.ShapeDtypeStruct((BATCH, 227, 227, 3), jnp.float32)
  with nn.intercept_methods(interceptor):
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert shapes['conv1'] == ((227, 227, 3), (55, 55, 96))
  assert shapes['conv2'] == ((27, 27, 96), (27, 27, 256))     # input: norm1 + pool1
  assert shapes['conv3'] == ((13, 13, 256), (13, 13, 384))    # input: norm2 + pool2
  assert shapes['conv4'] == ((13, 13, 384), (13, 13, 384))
  assert shapes['conv5'] == ((13, 13, 384), (13, 13, 256))
  assert shapes['fc6'] == ((9216,), (4096,))                  # input: pool5, 6*6*256
  assert shapes['fc7'] == ((4096,), (4096,))
  assert shapes['fc8'] == ((4096,), (1000,))
  assert logits.shape == (BATCH, 1000) and logits.dtype == jnp.float32
  for impl in (max_pool_strided_slices, 'strided_argmax', 'reduce_window'):
    pooled = jax.eval_shape(functools.partial(max_pool, impl=impl),
                            jax.ShapeDtypeStruct((BATCH, 13, 13, 256), jnp.float32))
    assert pooled.shape == (BATCH, 6, 6, 256)


def test_feature_sides_by_hand():
  """The sides the layer table gives, worked out by hand: (side + 2 pad - kernel) // stride + 1
  for each conv, (side - 3) // 2 + 1 for each max-pool."""
  paper = ('conv1', 'pool1', 'conv2', 'pool2', 'conv3', 'conv4', 'conv5', 'pool5')
  sides = model_lib.feature_sides(227)  # the paper's numbers
  assert list(sides) == list(paper)
  assert list(sides.values()) == [55, 27, 27, 13, 13, 13, 13, 6]
  # 67, the smallest input that works: (67 - 11) // 4 + 1 = 15, (15 - 3) // 2 + 1 = 7, ...
  assert list(model_lib.feature_sides(67).values()) == [15, 7, 7, 3, 3, 3, 3, 1]
  # One pixel less: pool5 has nothing left ((2 - 3) // 2 + 1 = 0).
  assert model_lib.feature_sides(66)['pool5'] == 0
  # torchvision's table at its 224: conv1 padded by 2, (224 + 4 - 11) // 4 + 1 = 55.
  assert list(model_lib.feature_sides(224, model_lib.TORCHVISION_CONV_LAYERS).values()) == [
      55, 27, 27, 13, 13, 13, 13, 6]
  assert list(model_lib.feature_sides(224).values()) == [54, 26, 26, 12, 12, 12, 12, 5]


def test_parameter_layout_and_count(model):
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 227, 227, 3)))
  assert set(variables) == {'params'}
  params = variables['params']
  assert set(params) == set(LAYOUT)
  for name, shape in LAYOUT.items():
    assert set(params[name]) == {'kernel', 'bias'}, name
    assert params[name]['kernel'].shape == shape, name
    assert params[name]['bias'].shape == (shape[-1],), name
    assert params[name]['kernel'].dtype == jnp.float32
    assert count_params(params[name]) == PAPER_PARAMS[name], name
  assert count_params(params) == sum(PAPER_PARAMS.values()) == 60_965_224
  assert model_lib.NUM_PARAMS_1000_CLASSES == 60_965_224


def test_bad_input_shape_says_what_to_pass(model, variables):
  with pytest.raises(ValueError, match='NHWC'):
    jax.eval_shape(model.apply, variables, jnp.zeros((1, 3, 227, 227)))


# --------------------------------------------------------------------------------------------
# The forward pass against the float64 numpy network
# --------------------------------------------------------------------------------------------
def test_forward_matches_float64_numpy(variables, images, eval_out):
  logits, acts, fc6_input = eval_out
  ref_logits, ref = np_alexnet(variables['params'], images)
  for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7'):
    assert rel_err(acts[name], ref[name]) < 1e-5, name
  # fc6 sees pool5 flattened in HWC order (the documented contract).
  assert rel_err(fc6_input, ref['pool5'].reshape(BATCH, -1)) < 1e-5
  assert rel_err(logits, ref_logits) < 1e-5
  assert not np.allclose(logits[0], logits[1])  # The two images are told apart.


@pytest.mark.parametrize('option', [dict(lrn_after_pool=True), dict(use_lrn=False)])
def test_lrn_options_match_numpy_and_change_the_numbers(option, variables, images, eval_out):
  logits, acts, _ = _make_apply(AlexNet(**option))(variables, images, jax.random.key(0),
                                                    train=False)
  ref_logits, _ = np_alexnet(variables['params'], images, **option)
  chex.assert_equal_shape([logits, eval_out[0]])
  assert acts['conv2'].shape == (BATCH, 27, 27, 256)
  assert rel_err(logits, ref_logits) < 1e-5
  # Same shapes, different numbers: far more than the 1e-5 agreement above.
  assert rel_err(acts['conv3'], eval_out[1]['conv3']) > 1e-3


# --------------------------------------------------------------------------------------------
# Train / eval behaviour, tracing, bf16, multi-crop prediction
# --------------------------------------------------------------------------------------------
def test_eval_is_deterministic_and_ignores_the_dropout_rng(apply_fn, variables, images, eval_out):
  again = apply_fn(variables, images, jax.random.key(123), train=False)
  chex.assert_trees_all_equal(again, eval_out)
  np.testing.assert_array_equal(eval_out[1]['Dropout_0'], np.maximum(eval_out[1]['fc6'], 0))


def test_dropout_drops_half_of_fc6_fc7_and_is_reproducible(apply_fn, variables, images):
  key = jax.random.key(7)
  logits, acts, _ = apply_fn(variables, images, key, train=True)
  for dense, dropout in (('fc6', 'Dropout_0'), ('fc7', 'Dropout_1')):
    pre = np.maximum(np.asarray(acts[dense]), 0)
    post = np.asarray(acts[dropout])
    alive = pre > 0
    assert alive.sum() > 1000, dense  # Enough units to measure a rate.
    kept = post[alive] != 0
    # Keep rate 0.5 within 5 binomial standard deviations.
    assert abs(kept.mean() - 0.5) < 5 * 0.5 / np.sqrt(alive.sum()), (dense, kept.mean())
    # Kept units are scaled by 1 / (1 - rate) = 2, dropped ones are exactly 0.
    np.testing.assert_allclose(post[alive][kept], 2 * pre[alive][kept], rtol=1e-6)
    assert np.all(post[~alive] == 0)
  same = apply_fn(variables, images, key, train=True)
  chex.assert_trees_all_equal(same[0], logits)
  other = apply_fn(variables, images, jax.random.key(8), train=True)
  assert not np.array_equal(other[1]['Dropout_0'], acts['Dropout_0'])
  assert not np.allclose(other[0], logits)


def test_jitted_apply_traces_once_per_shape(model, variables, images):
  traces = []
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=2)  # Two shapes below; a retrace for new values would be a third.
  def apply(variables, images):
    traces.append(images.shape)
    return model.apply(variables, images)

  jax.eval_shape(apply, variables, images)
  jax.eval_shape(apply, variables, images + 1.0)
  jax.eval_shape(apply, variables, images[:1])
  jax.eval_shape(apply, variables, images[1:] * 2)
  assert traces == [images.shape, images[:1].shape]


def test_shared_apply_did_not_retrace(apply_fn, apply_traces, variables, images):
  # After all the calls of the tests above, new values and keys still reuse the traces.
  apply_fn(variables, images * 0.5, jax.random.key(3), train=False)
  apply_fn(variables, images * 0.5, jax.random.key(3), train=True)
  assert sorted(apply_traces, key=str) == [(images.shape, False), (images.shape, True)]


def test_bfloat16_compute_stays_close_to_float32(variables, images, eval_out):
  logits, acts, _ = _make_apply(AlexNet(dtype=jnp.bfloat16))(variables, images,
                                                             jax.random.key(0), train=False)
  assert logits.dtype == jnp.float32
  assert acts['conv3'].dtype == jnp.bfloat16  # The compute really was bf16.
  assert rel_err(logits, eval_out[0]) < 1e-2


def test_predict_probabilities_averages_softmax_over_crops(model, variables, apply_fn):
  rng = np.random.default_rng(2)
  crops = jnp.asarray(rng.normal(0.0, 60.0, (1, 10, 227, 227, 3)), jnp.float32)
  probs = jax.jit(predict_probabilities, static_argnums=0)(model, variables, crops)
  assert probs.shape == (1, 1000)
  per_crop = []
  for i in range(0, 10, BATCH):  # The crops through the separately compiled batch-2 apply.
    logits = apply_fn(variables, crops[0, i:i + BATCH], jax.random.key(0), train=False)[0]
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    per_crop.append(z / z.sum(axis=-1, keepdims=True))
  expected = np.concatenate(per_crop).mean(axis=0)
  np.testing.assert_allclose(probs[0], expected, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(float(probs.sum()), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------
def _check_init(params, scheme):
  expected = model_lib.INITS[scheme]
  for name in LAYOUT:
    np.testing.assert_array_equal(params[name]['bias'],
                                  np.full(LAYOUT[name][-1], expected['bias'][name], np.float32))
    w = np.asarray(params[name]['kernel'], np.float64).ravel()
    n, std = w.size, expected['std'][name]
    # Sampling tolerances, 6 standard errors: of the mean std/sqrt(n), of the std std/sqrt(2n).
    assert abs(w.mean()) < 6 * std / np.sqrt(n), name
    assert abs(w.std() - std) < 6 * std / np.sqrt(2 * n), (name, w.std())
    # Normal, not uniform or truncated: P(|w| > 2 std) = 0.0455.
    tail = np.mean(np.abs(w) > 2 * std)
    assert abs(tail - 0.0455) < 6 * np.sqrt(0.0455 * 0.9545 / n), (name, tail)


def test_paper_init(variables):
  params = variables['params']
  _check_init(params, 'paper')
  # The paper's values, spelled out: N(0, 0.01) everywhere; bias 1 in conv2, 4, 5, fc6, 7.
  assert {n for n in LAYOUT if float(params[n]['bias'][0]) == 1.0} == {
      'conv2', 'conv4', 'conv5', 'fc6', 'fc7'}
  assert {n for n in LAYOUT if float(params[n]['bias'][0]) == 0.0} == {'conv1', 'conv3', 'fc8'}


def test_caffe_init():
  # At the smallest input (fc6 256 x 4096, not 9216 x 4096): a scheme's stds are per layer, not
  # per fan-in, and a million draws still pin fc6's std; a third of the random bits to make.
  params = unrolled_threefry.jit(AlexNet(init_scheme='caffe').init)(
      jax.random.key(1), jnp.zeros((1, 67, 67, 3)))['params']
  _check_init(params, 'caffe')
  assert float(np.std(params['fc6']['kernel'])) == pytest.approx(0.005, rel=1e-2)
  assert float(params['fc7']['bias'][0]) == pytest.approx(0.1)


def test_unknown_init_scheme_says_what_to_use():
  with pytest.raises(ValueError, match="'paper' or 'caffe'"):
    jax.eval_shape(AlexNet(init_scheme='he').init, jax.random.key(0), jnp.zeros((1, 227, 227, 3)))


# --------------------------------------------------------------------------------------------
# The grouped (tower) convolution and the pooling implementations
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('groups,stride,pad,ksize', [(2, 1, 1, 3), (2, 1, 2, 5), (4, 1, 1, 3),
                                                     (2, 4, 0, 11)])
def test_split_grouped_conv_equals_feature_group_count(groups, stride, pad, ksize):
  rng = np.random.default_rng(groups + stride)
  cin, cout = 8, 12
  x = jnp.asarray(rng.normal(size=(2, 23, 23, cin)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(ksize, ksize, cin // groups, cout)), jnp.float32)
  padding = ((pad, pad), (pad, pad))

  def reference(x, kernel):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                    feature_group_count=groups,
                                    precision=lax.Precision.HIGHEST)

  def split(x, kernel):
    return grouped_conv(x, kernel, (stride, stride), padding, groups, impl='split')

  out, vjp = jax.vjp(split, x, kernel)
  ref_out, ref_vjp = jax.vjp(reference, x, kernel)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-4)
  # Also the float64 numpy convolution: feature_group_count's layout is what we think it is.
  np.testing.assert_allclose(out, np_conv(np.asarray(x, np.float64),
                                          np.asarray(kernel, np.float64), stride, pad, groups),
                             rtol=1e-5, atol=1e-4)
  cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  for got, want in zip(vjp(cotangent), ref_vjp(cotangent)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('shape', [(2, 55, 55, 3), (2, 27, 27, 4), (2, 13, 13, 5), (1, 8, 9, 2)])
def test_strided_slices_max_pool_equals_reduce_window(shape):
  rng = np.random.default_rng(sum(shape))
  # A permutation: no ties, so the two implementations route gradients to the same elements.
  x = jnp.asarray(rng.permutation(np.prod(shape)).reshape(shape) / np.prod(shape), jnp.float32)
  # The experiment's formulation (experiments/bench/model_options.py), through the model's op.
  out, vjp = jax.vjp(functools.partial(max_pool, impl=max_pool_strided_slices), x)
  ref, ref_vjp = jax.vjp(
      lambda a: nn.max_pool(a, (3, 3), strides=(2, 2), padding='VALID'), x)
  np.testing.assert_array_equal(out, ref)
  np.testing.assert_array_equal(out, np_pool(np.asarray(x)))
  cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  np.testing.assert_allclose(vjp(cotangent)[0], ref_vjp(cotangent)[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(max_pool(x, impl='reduce_window'), ref)
