"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) as pure Flax linen modules.

This module imports only jax, numpy and flax: other JAX projects can ``import
alexnet_jax.model`` without pulling in TensorFlow, the input pipeline or training code.

The network (input NHWC float images of 227x227x3, output logits)::

    conv1  96 @ 11x11x3, stride 4, valid, ReLU         55x55x96
    norm1  LRN (groups=2), pool1 max 3x3/2              27x27x96
    conv2  256 @ 5x5x48, 2 groups, pad 2, ReLU          27x27x256
    norm2  LRN (groups=2), pool2 max 3x3/2              13x13x256
    conv3  384 @ 3x3x256, pad 1, ReLU (sees both towers) 13x13x384
    conv4  384 @ 3x3x192, 2 groups, pad 1, ReLU         13x13x384
    conv5  256 @ 3x3x192, 2 groups, pad 1, ReLU         13x13x256
    pool5  max 3x3/2                                     6x6x256
    fc6    9216 -> 4096, ReLU, dropout 0.5
    fc7    4096 -> 4096, ReLU, dropout 0.5
    fc8    4096 -> num_classes (logits; no softmax)
    60,965,224 parameters for 1000 classes.

Presets
-------
``preset(name, **overrides)`` builds the published AlexNets from ``AlexNet``'s fields
(:data:`PRESETS`); ``preprocess(name, images)`` is each one's pixel preprocessing and
:data:`PRESET_INPUTS` its input size, resize, published accuracy and weight source:

============  ==================================================  =====  ==============================
preset        differences from the paper                          input  preprocessing (RGB 0..255 in)
============  ==================================================  =====  ==============================
paper         (the network above; the default)                    227    minus ImageNet's mean pixel
bvlc          Caffe's LRN (k 1, alpha 1e-4/5, windows across all  227    minus Caffe's mean pixel
              channels), Caffe init
caffenet      as bvlc, pool before norm                           227    minus Caffe's mean pixel
torchvision   64-192-384-256-256, conv1 pad 2, no LRN, no groups, 224    /255, ImageNet mean/std
              adaptive average pool to 6x6, dropout before fc6/fc7
============  ==================================================  =====  ==============================

Caffe pools with ceil rounding; at 227 every pool divides exactly, so ours (floor) is the same.

Parameter layout (a public contract: weight converters and ``alexnet_jax.layout`` rely on it)
-------------------------------------------------------------------------------------------
``params = {'conv1': {'kernel', 'bias'}, ..., 'conv5': ..., 'fc6': ..., 'fc7': ..., 'fc8': ...}``

* Conv kernels are HWIO. A grouped conv's kernel is stored as ``(kh, kw, in_channels // groups,
  out_channels)``, exactly the layout of ``lax.conv_general_dilated(..., feature_group_count=2)``
  and of ``flax.linen.Conv(feature_group_count=2)``: output channels ``[0:out/2]`` belong to
  tower 0 and see input channels ``[0:in/2]``; ``[out/2:out]`` belong to tower 1.
* Dense kernels are ``(in, out)``. fc6's input is the flatten of the (6, 6, 256) map in HWC
  order (row-major over height, width, channel).
* Biases are ``(out,)``.
* The same names, layouts and fc6 flatten for every preset (only the widths differ).

Splitting every kernel's output axis in two gives each tower's weights: this is how the paper's
two GPUs held the network and how ``alexnet_jax.layout`` places it on a ``model`` mesh axis.

Model parallelism
-----------------
With ``model_axis`` set, the module runs inside ``jax.shard_map`` on one shard of a mesh axis and
expects the local shard of every kernel (output features divided by the axis size). Which layers
are split is chosen by ``model_parallel_convs`` (the paper's two towers: conv layers split, each
device holding one tower) and ``model_parallel_fcs`` (fully-connected layers split). Activations
cross devices only where the paper's GPUs exchanged them: at conv3's input, at the inputs of
fc6, fc7 and fc8, and for the logits. With convs replicated and fcs split (Krizhevsky 2014,
"one weird trick") the batch is gathered over ``model_axis`` before fc6 instead.

The model returns logits: softmax belongs to the loss (``optax.softmax_cross_entropy``) and to
prediction helpers such as :func:`predict_probabilities`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

Array = jax.Array
Dtype = Any

NUM_PARAMS_1000_CLASSES = 60_965_224


# --------------------------------------------------------------------------------------------
# Local response normalisation
# --------------------------------------------------------------------------------------------
def lrn_window(size: int) -> tuple[int, int]:
  """Channels before and after ``c`` in the window of channel ``c``: ``(size // 2, (size - 1) // 2)``.

  For odd sizes (the paper's 5) this is the symmetric window ``c - 2 .. c + 2``. For even sizes it
  follows PyTorch and Caffe (one more channel before than after).
  """
  return size // 2, (size - 1) // 2


def _band_matrix(channels: int, size: int, groups: int) -> np.ndarray:
  """(C, C) 0/1 matrix: ``B[j, c] = 1`` when channel j is in channel c's window and group."""
  before, after = lrn_window(size)
  idx = np.arange(channels)
  group = idx // (channels // groups)
  diff = idx[:, None] - idx[None, :]  # j - c
  inside = (diff >= -before) & (diff <= after) & (group[:, None] == group[None, :])
  return inside.astype(np.float32)


def _window_sum_matmul(sq: Array, size: int, groups: int) -> Array:
  band = jnp.asarray(_band_matrix(sq.shape[-1], size, groups), dtype=sq.dtype)
  return jnp.dot(sq, band, precision=lax.Precision.HIGHEST)


def _window_sum_reduce_window(sq: Array, size: int, groups: int) -> Array:
  before, after = lrn_window(size)
  shape = sq.shape
  grouped = sq.reshape(shape[:-1] + (groups, shape[-1] // groups))
  nd = grouped.ndim
  summed = lax.reduce_window(
      grouped, 0.0, lax.add,  # Python-scalar init: reduce_window only differentiates this way.
      window_dimensions=(1,) * (nd - 1) + (size,),
      window_strides=(1,) * nd,
      padding=((0, 0),) * (nd - 1) + ((before, after),))
  return summed.reshape(shape)


def _window_sum_cumsum(sq: Array, size: int, groups: int) -> Array:
  before, after = lrn_window(size)
  shape = sq.shape
  grouped = sq.reshape(shape[:-1] + (groups, shape[-1] // groups))
  pad = [(0, 0)] * (grouped.ndim - 1) + [(before + 1, after)]
  csum = jnp.cumsum(jnp.pad(grouped, pad), axis=-1)
  summed = csum[..., size:] - csum[..., :-size]
  return summed.reshape(shape)


def _window_sum_shifted(sq: Array, size: int, groups: int) -> Array:
  before, after = lrn_window(size)
  shape = sq.shape
  grouped = sq.reshape(shape[:-1] + (groups, shape[-1] // groups))
  width = grouped.shape[-1]
  pad = [(0, 0)] * (grouped.ndim - 1) + [(before, after)]
  padded = jnp.pad(grouped, pad)
  summed = sum(padded[..., i:i + width] for i in range(size))
  return summed.reshape(shape)


_WINDOW_SUMS = {
    'shifted_slices': _window_sum_shifted,
    'matmul': _window_sum_matmul,
    'reduce_window': _window_sum_reduce_window,
    'cumsum': _window_sum_cumsum,
}
LrnImpl = Literal['shifted_slices', 'matmul', 'reduce_window', 'cumsum']


LrnGrad = Literal['autodiff', 'closed_form']


def _flip_within_groups(v: Array, groups: int) -> Array:
  shape = v.shape
  return v.reshape(shape[:-1] + (groups, shape[-1] // groups))[..., ::-1].reshape(shape)


def _lrn_scale(xf: Array, size: int, k: float, alpha: float, beta: float, groups: int,
               impl: LrnImpl) -> tuple[Array, Array]:
  """``(s, s ** -beta)`` with ``s = k + alpha * window_sum(x^2)``."""
  scale = k + alpha * _WINDOW_SUMS[impl](xf * xf, size, groups)
  if beta == 0.75:
    # x ** -0.75 = rsqrt(x) * rsqrt(sqrt(x)): two cheap ops instead of exp(log(x) * -0.75).
    return scale, lax.rsqrt(scale) * lax.rsqrt(jnp.sqrt(scale))
  return scale, scale ** (-beta)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _lrn_closed_form(xf: Array, size: int, k: float, alpha: float, beta: float, groups: int,
                     impl: LrnImpl) -> Array:
  return xf * _lrn_scale(xf, size, k, alpha, beta, groups, impl)[1]


def _lrn_closed_form_fwd(xf, size, k, alpha, beta, groups, impl):
  scale, inv = _lrn_scale(xf, size, k, alpha, beta, groups, impl)
  return xf * inv, (xf, inv, inv / scale)


def _lrn_closed_form_bwd(size, k, alpha, beta, groups, impl, residuals, dy):
  # y_c = x_c s_c^-b with s_c = k + a sum_{j in W(c)} x_j^2, so
  # dx_i = dy_i s_i^-b - 2ab x_i sum_{c: i in W(c)} dy_c x_c s_c^(-b-1).
  # {c: i in W(c)} is the mirrored window (after, before): for odd sizes W itself; for even
  # sizes the window sum of the channel-reversed (within each group) input, reversed back.
  xf, inv, inv_over_scale = residuals
  t = dy * xf * inv_over_scale
  before, after = lrn_window(size)
  if before == after:
    back = _WINDOW_SUMS[impl](t, size, groups)
  else:
    back = _flip_within_groups(
        _WINDOW_SUMS[impl](_flip_within_groups(t, groups), size, groups), groups)
  return (dy * inv - (2.0 * alpha * beta) * xf * back,)


_lrn_closed_form.defvjp(_lrn_closed_form_fwd, _lrn_closed_form_bwd)


def local_response_norm(x: Array, size: int = 5, k: float = 2.0, alpha: float = 1e-4,
                        beta: float = 0.75, groups: int = 1,
                        impl: LrnImpl = 'reduce_window', grad: LrnGrad = 'autodiff') -> Array:
  """The paper's LRN over the last (channel) axis, as a function.

  ``b[c] = a[c] / (k + alpha * sum_{j in window(c)} a[j]^2) ** beta``: a *sum* of squares, alpha
  not divided by ``size``; windows are clipped at the channel edges and never cross a group
  boundary (the channels are split into ``groups`` equal contiguous groups).

  ``grad`` picks how the gradient is computed: 'autodiff' differentiates the forward ops;
  'closed_form' (a ``jax.custom_vjp``) uses
  ``dx = dy s^-beta - 2 alpha beta x W'(dy x s^(-beta-1))`` with ``W'`` the mirrored window
  sum: one window sum and a few elementwise ops instead of the transposes of every forward op
  (see experiments/PERF.md). Same numbers up to fp32 rounding.

  ``impl`` picks how the window sum is computed; all give the same numbers. Forward+backward
  on XLA:CPU, batch 32, fp32, 2 cores (``python experiments/lrn_formulations.py``), ms for
  norm1 (32,55,55,96) / norm2 (32,27,27,256): 'reduce_window' 104 / 76 (the default, fastest),
  'matmul' (banded (C, C) matrix, block-diagonal per group) 124 / 97, 'shifted_slices' (sum of
  ``size`` shifted views) 239 / 142, 'cumsum' (difference of a cumulative sum) 291 / 128.
  """
  channels = x.shape[-1]
  if channels % groups:
    raise ValueError(f'LRN: {channels} channels do not split into {groups} equal groups.')
  if size < 1:
    raise ValueError(f'LRN: size must be at least 1, got {size}.')
  if grad not in ('autodiff', 'closed_form'):
    raise ValueError(f"LRN: grad must be 'autodiff' or 'closed_form', got {grad!r}.")
  # Squares and their sum in at least fp32: bf16 sums of squares lose the small alpha term.
  compute_dtype = jnp.promote_types(x.dtype, jnp.float32)
  xf = x.astype(compute_dtype)
  if grad == 'closed_form':
    return _lrn_closed_form(xf, size, k, alpha, beta, groups, impl).astype(x.dtype)
  return (xf * _lrn_scale(xf, size, k, alpha, beta, groups, impl)[1]).astype(x.dtype)


class LocalResponseNorm(nn.Module):
  """Local response normalisation across channels, channels last (paper, section 3.3).

  ``b[c] = a[c] / (k + alpha * sum_{j=max(0, c-n/2)}^{min(N-1, c+n/2)} a[j]^2) ** beta`` with the
  paper's ``n=5, k=2, alpha=1e-4, beta=0.75``. With ``groups > 1`` the channels are split into
  equal contiguous groups and no window crosses a group boundary: AlexNet uses ``groups=2`` so
  that one device computes exactly what the paper's two towers computed.

  Other conventions: PyTorch's ``nn.LocalResponseNorm(size, alpha, beta, k)`` and Caffe divide
  alpha by ``size``, so the paper's layer is ``torch.nn.LocalResponseNorm(5, alpha=5e-4,
  beta=0.75, k=2.0)`` and, conversely, a PyTorch/Caffe model with ``alpha=a`` is
  ``LocalResponseNorm(alpha=a / size)`` here (Caffe's default ``k`` is 1: pass ``k=1.0``).
  TensorFlow's ``tf.nn.local_response_normalization(depth_radius=2, bias=2, alpha=1e-4,
  beta=0.75)`` is the paper's formula as written.
  """
  size: int = 5
  k: float = 2.0
  alpha: float = 1e-4
  beta: float = 0.75
  groups: int = 1
  impl: LrnImpl = 'reduce_window'
  grad: LrnGrad = 'autodiff'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return local_response_norm(x, self.size, self.k, self.alpha, self.beta, self.groups,
                               self.impl, self.grad)


# --------------------------------------------------------------------------------------------
# Pooling and the grouped (tower) convolution
# --------------------------------------------------------------------------------------------
PoolImpl = Literal['reduce_window', 'strided_slices', 'strided_argmax']
Auto = Literal['auto']


def _pool_views(x: Array, window: int, stride: int) -> list[Array]:
  """The window*window strided views of x, in row-major window order."""
  n, h, w, c = x.shape
  out_h = (h - window) // stride + 1
  out_w = (w - window) // stride + 1
  return [lax.slice(x, (0, i, j, 0),
                    (n, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, c),
                    (1, stride, stride, 1))
          for i in range(window) for j in range(window)]


def _max_and_argmax(x: Array, window: int, stride: int) -> tuple[Array, Array]:
  """The max over each window and the window index (row-major) of its first maximum."""
  result, index = None, None
  for k, view in enumerate(_pool_views(x, window, stride)):
    if result is None:
      result, index = view, jnp.zeros(view.shape, jnp.int8)
    else:
      # Strictly greater: ties keep the earlier element, as reduce_window's gradient does.
      greater = view > result
      result = jnp.where(greater, view, result)
      index = jnp.where(greater, jnp.int8(k), index)
  return result, index


def _materialize(x: Array) -> Array:
  """``x``, computed once into its own buffer: XLA may not fuse its computation into consumers.

  ``lax.optimization_barrier`` would say this, but XLA:CPU removes barriers before fusion. A
  conditional is a fusion boundary on every backend. Both branches return ``x`` (JAX would
  forward a bare ``lambda v: v`` past the conditional, hence the ``+ 0``), and the predicate
  (any value would do) depends on the data so that XLA cannot remove the conditional.
  """
  keep = lambda v: v + jnp.zeros((), v.dtype)
  return lax.cond(x[(0,) * x.ndim] > 0, keep, keep, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_argmax(x: Array, window: int, stride: int) -> Array:
  return _max_and_argmax(x, window, stride)[0]


def _max_pool_argmax_fwd(x, window, stride):
  result, index = _max_and_argmax(x, window, stride)
  # Kept as computed: otherwise XLA:CPU fuses the 9 compares into the backward and redoes
  # them for every window element there, and keeps the pool's input alive until then.
  index = _materialize(index)
  # The input's spatial size travels as the shape of an empty array (residuals are arrays).
  return result, (index, jnp.zeros((0,) + x.shape[1:3], x.dtype))


def _max_pool_argmax_bwd(window, stride, residuals, dy):
  # Each output's gradient goes to its window's first maximum. Window element (a, b) of output
  # (i, j) is input (s*i + a, s*j + b): in the stride-phase plane (a % s, b % s) of the input
  # (the inputs whose coordinates are congruent to it mod s) it sits at (i + a // s, j + b // s).
  # So each plane's gradient is a sum of unit-stride shifted copies of the routed output
  # gradient (pads without interior padding, which XLA fuses into one pass per plane), and the
  # planes interleave back into the input: far less memory traffic than the autodiff of
  # 'strided_slices' (one input-sized, interior-padded scatter per window element).
  index, empty = residuals
  height, width = empty.shape[1:]
  n, out_h, out_w, c = dy.shape
  s = stride
  plane_h, plane_w = -(-height // s), -(-width // s)
  planes = {}
  for a in range(window):
    for b in range(window):
      routed = jnp.where(index == a * window + b, dy, jnp.zeros((), dy.dtype))
      top, left = a // s, b // s
      placed = jnp.pad(routed, ((0, 0), (top, plane_h - out_h - top),
                                (left, plane_w - out_w - left), (0, 0)))
      key = (a % s, b % s)
      planes[key] = placed if key not in planes else planes[key] + placed
  zeros = jnp.zeros((n, plane_h, plane_w, c), dy.dtype)
  grid = jnp.stack([jnp.stack([planes.get((r, q), zeros) for q in range(s)], axis=3)
                    for r in range(s)], axis=2)  # (n, plane_h, s, plane_w, s, c)
  dx = grid.reshape(n, plane_h * s, plane_w * s, c)[:, :height, :width, :]
  return (dx,)


_max_pool_argmax.defvjp(_max_pool_argmax_fwd, _max_pool_argmax_bwd)


def max_pool(x: Array, window: int = 3, stride: int = 2,
             impl: PoolImpl = 'strided_slices') -> Array:
  """Overlapping max-pooling (window 3, stride 2, no padding) over NHWC maps.

  'strided_slices' takes the elementwise max of the window*window strided views; its gradient is
  a fused select instead of XLA:CPU's slow select-and-scatter (see experiments/PERF.md). Ties
  are broken differently from 'reduce_window' (they have measure zero for float activations).
  'strided_argmax' computes the same max with the index of the first maximum and a hand-written
  gradient (a ``jax.custom_vjp``) that routes each output's gradient to that element through
  the input's stride-phase planes; ties go to the first maximum, as with 'reduce_window'.
  """
  if impl == 'reduce_window':
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding='VALID')
  if impl == 'strided_argmax':
    return _max_pool_argmax(x, window, stride)
  if impl != 'strided_slices':
    raise ValueError(f"pool impl must be 'reduce_window', 'strided_slices' or "
                     f"'strided_argmax', got {impl!r}.")
  result = None
  for view in _pool_views(x, window, stride):
    result = view if result is None else jnp.maximum(result, view)
  return result


def _adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) averaging weights of ``AdaptiveAvgPool`` along one axis.

  Output ``i`` averages inputs ``floor(i * size_in / size_out)`` up to (excluding)
  ``ceil((i + 1) * size_in / size_out)``, PyTorch's windows (they overlap when the sizes do not
  divide, and repeat inputs when ``size_in < size_out``).
  """
  weights = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start, stop = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
    weights[i, start:stop] = 1.0 / (stop - start)
  return weights


def adaptive_avg_pool(x: Array, size: int) -> Array:
  """Average NHWC maps to ``size x size`` as ``torch.nn.AdaptiveAvgPool2d(size)`` does.

  The identity when the map already has that size (torchvision's AlexNet at 224). Each window
  is a rectangle, so the average is one averaging matrix per spatial axis, applied in at least
  float32.
  """
  height, width = x.shape[1:3]
  if (height, width) == (size, size):
    return x
  compute = jnp.promote_types(x.dtype, jnp.float32)
  rows = jnp.asarray(_adaptive_pool_matrix(height, size), compute)
  cols = jnp.asarray(_adaptive_pool_matrix(width, size), compute)
  y = jnp.einsum('ih,jw,nhwc->nijc', rows, cols, x.astype(compute),
                 precision=lax.Precision.HIGHEST)
  return y.astype(x.dtype)


ConvImpl = Literal['split', 'feature_group_count']
WeightGrad = Literal['xla', 'matmul']
Conv1Impl = Literal['direct', 'space_to_depth']
NarrowConvImpl = Literal['xla', 'padded_output']
# YNNPACK (XLA:CPU's convolution library) runs stride-1 convolutions with at most this many
# output channels on one thread (conv1's 96; conv2's input gradient, 48 per group); XLA's other
# CPU path (Eigen) runs them on every core (experiments/PERF.md, attempt 19).
NARROW_CONV_CHANNELS = 96
_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def _padded_and_cropped(x: Array, kernel: Array, padding, extra) -> Array:
  """A stride-1 convolution with ``extra`` ((top, bottom), (left, right)) more padding, cropped.

  The same numbers as the convolution with ``padding``, computed in a shape XLA:CPU runs
  faster (see :func:`_conv`).
  """
  pads = tuple((lo + a, hi + b) for (lo, hi), (a, b) in zip(padding, extra))
  y = lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DIMENSION_NUMBERS)
  (top, bottom), (left, right) = extra
  return y[:, top:y.shape[1] - bottom, left:y.shape[2] - right]


def _conv(x: Array, kernel: Array, strides: tuple[int, int], padding,
          narrow: NarrowConvImpl = 'xla') -> Array:
  kh, kw = kernel.shape[:2]
  if strides != (1, 1) or (kh, kw) == (1, 1):
    return lax.conv_general_dilated(x, kernel, strides, padding,
                                    dimension_numbers=_DIMENSION_NUMBERS)
  if narrow == 'padded_output' and kernel.shape[-1] <= NARROW_CONV_CHANNELS:
    # Padded until the output is larger than the input, a shape YNNPACK declines: XLA:CPU then
    # runs it on its Eigen path, on every core where YNNPACK uses one for so few output
    # channels, at the cost of the border's extra products (PERF.md, 19).
    # Output size + 2e > input size, the output being input + lo + hi - k + 1.
    extra = [(e, e) for e in (max(0, (k - 1 - lo - hi) // 2 + 1)
                              for k, (lo, hi) in zip((kh, kw), padding))]
    return _padded_and_cropped(x, kernel, padding, extra)
  if not any(lo or hi for lo, hi in padding):
    # A VALID convolution as the 'SAME'-padded one, cropped: YNNPACK runs a convolution whose
    # output is as large as its input about twice as fast (conv1 in blocks, 57x57 -> 55x55:
    # 86 vs 155-167 ms at batch 32; PERF.md, 13).
    return _padded_and_cropped(x, kernel, padding, (((kh - 1) // 2, kh - 1 - (kh - 1) // 2),
                                                    ((kw - 1) // 2, kw - 1 - (kw - 1) // 2)))
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  dimension_numbers=_DIMENSION_NUMBERS)


def conv_weight_grad_matmul(x: Array, dy: Array, kernel_shape: Sequence[int],
                            strides: tuple[int, int], padding) -> Array:
  """The kernel gradient of an NHWC x HWIO convolution as ``kh * kw`` matrix products.

  ``dK[i, j] = sum over (n, h, w) of xpad[n, s*h + i, s*w + j, :]^T dy[n, h, w, :]``: for each
  kernel tap, the input view it multiplies (a strided slice of the padded input, flattened to
  (N*OH*OW, Cin)) transposed times the output gradient (N*OH*OW, Cout). Products accumulate
  in at least float32; the result is float32 (callers cast).

  The taps run one after another in a ``lax.scan``: unrolled, XLA keeps every tap's input view
  alive at once (about 1.7 GB at batch 128 for AlexNet), in a loop only one.
  """
  kh, kw, cin, cout = kernel_shape
  (pad_t, pad_b), (pad_l, pad_r) = padding
  xp = jnp.pad(x, ((0, 0), (pad_t, pad_b), (pad_l, pad_r), (0, 0)))
  n, out_h, out_w, _ = dy.shape
  sh, sw = strides
  span_h, span_w = sh * (out_h - 1) + 1, sw * (out_w - 1) + 1
  dy_flat = dy.reshape(-1, cout)
  acc = jnp.promote_types(dy.dtype, jnp.float32)

  def tap(carry, offset):
    window = lax.dynamic_slice(xp, (0, offset[0], offset[1], 0), (n, span_h, span_w, cin))
    view = window[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else window
    # An explicit (Cin, M) transpose, then a plain (Cin, M) x (M, Cout) product: measured
    # faster on XLA:CPU than contracting the leading axes of both operands.
    return carry, jnp.dot(view.reshape(-1, cin).T, dy_flat, preferred_element_type=acc)

  offsets = jnp.asarray([(i, j) for i in range(kh) for j in range(kw)], jnp.int32)
  _, taps = lax.scan(tap, None, offsets)
  return taps.reshape(kh, kw, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_matmul_weight_grad(x: Array, kernel: Array, strides, padding, narrow) -> Array:
  return _conv(x, kernel, strides, padding, narrow)


def _conv_matmul_weight_grad_fwd(x, kernel, strides, padding, narrow):
  return _conv(x, kernel, strides, padding, narrow), (x, kernel)


def _conv_matmul_weight_grad_bwd(strides, padding, narrow, residuals, dy):
  x, kernel = residuals
  # The input gradient is a transposed convolution (fast on XLA:CPU); unused for conv1, whose
  # input gradient XLA then removes.
  if narrow == 'padded_output' and strides == (1, 1):
    # Written out, so that a narrow one (conv2's, 48 channels per group) takes the same path
    # as a narrow forward: the output-gradient convolved with the flipped, transposed kernel.
    kh, kw = kernel.shape[:2]
    (pad_t, pad_b), (pad_l, pad_r) = padding
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = _conv(dy, flipped, (1, 1), ((kh - 1 - pad_t, kh - 1 - pad_b),
                                     (kw - 1 - pad_l, kw - 1 - pad_r)), narrow)
  else:
    _, input_vjp = jax.vjp(lambda v: _conv(v, kernel, strides, padding, narrow), x)
    dx = input_vjp(dy)[0]
  dkernel = conv_weight_grad_matmul(x, dy, kernel.shape, strides, padding)
  return dx, dkernel.astype(kernel.dtype)


_conv_matmul_weight_grad.defvjp(_conv_matmul_weight_grad_fwd, _conv_matmul_weight_grad_bwd)


def _explicit_padding(x: Array, kernel: Array, strides: tuple[int, int], padding):
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def conv2d(x: Array, kernel: Array, strides: Sequence[int], padding,
           weight_grad: WeightGrad = 'xla', narrow: NarrowConvImpl = 'xla') -> Array:
  """An ungrouped NHWC x HWIO convolution.

  ``weight_grad`` says how its kernel gradient is computed: 'xla' differentiates the
  convolution (XLA:CPU computes the kernel gradient as a convolution over the batch, a slow
  path there); 'matmul' computes it with :func:`conv_weight_grad_matmul` (a ``jax.custom_vjp``;
  the forward pass and the input gradient are unchanged). Same numbers up to fp32 rounding.
  ``narrow='padded_output'`` computes stride-1 convolutions with at most
  :data:`NARROW_CONV_CHANNELS` output channels (and, with 'matmul', such input gradients) with
  extra padding, cropped (see :func:`_conv`): XLA:CPU then uses every core for them.
  """
  strides = tuple(int(v) for v in strides)
  padding = _explicit_padding(x, kernel, strides, padding)
  if narrow not in ('xla', 'padded_output'):
    raise ValueError(f"narrow conv impl must be 'xla' or 'padded_output', got {narrow!r}.")
  if weight_grad == 'xla':
    return _conv(x, kernel, strides, padding, narrow)
  if weight_grad == 'matmul':
    return _conv_matmul_weight_grad(x, kernel, strides, padding, narrow)
  raise ValueError(f"weight_grad must be 'xla' or 'matmul', got {weight_grad!r}.")


def space_to_depth_blocks(x: Array, kernel: Array, stride: int) -> tuple[Array, Array]:
  """The image and kernel of a VALID strided convolution cut into ``stride x stride`` blocks.

  Returns ``(blocks, block_kernel)``: the image's blocks stacked on the channel axis (227x227x3
  -> 57x57x48 for conv1) and the kernel likewise, zero-padded to whole blocks (11x11x3 ->
  3x3x48), so that a VALID stride-1 convolution of the two is the strided convolution (the
  padded taps multiply zeros). See :func:`space_to_depth_conv`.
  """
  n, h, w, c = x.shape
  kh, kw, _, cout = kernel.shape
  s = stride
  out_h, out_w = (h - kh) // s + 1, (w - kw) // s + 1
  bh, bw = -(-kh // s), -(-kw // s)  # kernel size in blocks
  # Rows needed: output row o reads blocks o .. o + bh - 1. Rows past the image meet only the
  # zero-padded kernel taps; rows past the last block used are never read.
  rows, cols = (out_h + bh - 1) * s, (out_w + bw - 1) * s
  x = x[:, :rows, :cols, :]
  x = jnp.pad(x, ((0, 0), (0, rows - x.shape[1]), (0, cols - x.shape[2]), (0, 0)))
  x = x.reshape(n, rows // s, s, cols // s, s, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(n, rows // s, cols // s, s * s * c)
  k = jnp.pad(kernel, ((0, bh * s - kh), (0, bw * s - kw), (0, 0), (0, 0)))
  k = k.reshape(bh, s, bw, s, c, cout).transpose(0, 2, 1, 3, 4, 5).reshape(bh, bw, s * s * c,
                                                                           cout)
  return x, k


def space_to_depth_conv(x: Array, kernel: Array, stride: int,
                        weight_grad: WeightGrad = 'xla', narrow: NarrowConvImpl = 'xla') -> Array:
  """A VALID ``stride`` x ``stride`` strided convolution as a stride-1 convolution on blocks.

  The blocks of :func:`space_to_depth_blocks`: the same products and sums, laid out as a dense
  stride-1 convolution with ``stride**2`` times the input channels, which XLA:CPU runs far
  faster than a stride-4 convolution over 3 channels. The kernel keeps its layout.
  """
  blocks, block_kernel = space_to_depth_blocks(x, kernel, stride)
  return conv2d(blocks, block_kernel, (1, 1), ((0, 0), (0, 0)), weight_grad, narrow)


def grouped_conv(x: Array, kernel: Array, strides: Sequence[int], padding, groups: int,
                 impl: ConvImpl = 'split', weight_grad: WeightGrad = 'xla',
                 narrow: NarrowConvImpl = 'xla') -> Array:
  """NHWC x HWIO convolution with ``groups`` groups, kernel (kh, kw, in/groups, out).

  'split' runs one plain convolution per group on the channel slices and concatenates the outputs:
  the same numbers as ``feature_group_count=groups`` and several times faster forward+backward on
  XLA:CPU. The kernel keeps the single ``feature_group_count`` layout either way.
  ``weight_grad`` and ``narrow`` (see :func:`conv2d`) apply to 'split' and ungrouped
  convolutions.
  """
  strides = tuple(strides)
  if impl == 'feature_group_count' and groups > 1:
    return lax.conv_general_dilated(x, kernel, strides, padding,
                                    dimension_numbers=_DIMENSION_NUMBERS,
                                    feature_group_count=groups)
  if groups == 1:
    return conv2d(x, kernel, strides, padding, weight_grad, narrow)
  in_per_group = x.shape[-1] // groups
  out_per_group = kernel.shape[-1] // groups
  outs = [
      conv2d(x[..., g * in_per_group:(g + 1) * in_per_group],
             kernel[..., g * out_per_group:(g + 1) * out_per_group],
             strides, padding, weight_grad, narrow)
      for g in range(groups)
  ]
  return jnp.concatenate(outs, axis=-1)


class TowerConv(nn.Module):
  """A convolution whose kernel is stored in ``feature_group_count`` layout, computed fast.

  Parameters ``kernel`` (kh, kw, in_channels // groups, features) and ``bias`` (features,).
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: int = 0
  groups: int = 1
  kernel_init: Any = nn.initializers.normal(0.01)
  bias_init: Any = nn.initializers.zeros
  conv_impl: ConvImpl = 'split'
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  weight_grad: WeightGrad = 'xla'
  space_to_depth: bool = False  # VALID, square-strided, ungrouped only (conv1)
  narrow: NarrowConvImpl = 'xla'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_channels = x.shape[-1]
    if in_channels % self.groups or self.features % self.groups:
      raise ValueError(f'{self.name}: {in_channels} input and {self.features} output channels '
                       f'do not split into {self.groups} groups.')
    kernel = self.param('kernel', self.kernel_init,
                        self.kernel_size + (in_channels // self.groups, self.features),
                        self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, kernel)
    pad = ((self.padding, self.padding),) * 2
    if self.space_to_depth and self.strides[0] > 1:
      if self.groups != 1 or self.strides[0] != self.strides[1]:
        raise ValueError(f'{self.name}: space_to_depth needs an ungrouped convolution with '
                         'equal strides.')
      # Padded first, the convolution is VALID (torchvision's conv1 pads by 2).
      x = jnp.pad(x, ((0, 0),) + pad + ((0, 0),)) if self.padding else x
      y = space_to_depth_conv(x.astype(dtype), kernel.astype(dtype), self.strides[0],
                              self.weight_grad, self.narrow)
    else:
      y = grouped_conv(x.astype(dtype), kernel.astype(dtype), self.strides, pad, self.groups,
                       self.conv_impl, self.weight_grad, self.narrow)
    return y + bias.astype(dtype)


class Dense(nn.Module):
  """``x @ kernel + bias`` with kernel (in, features): ``flax.linen.Dense`` without extras."""
  features: int
  kernel_init: Any = nn.initializers.normal(0.01)
  bias_init: Any = nn.initializers.zeros
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, kernel)
    return jnp.dot(x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


# --------------------------------------------------------------------------------------------
# AlexNet
# --------------------------------------------------------------------------------------------
# (name, features, kernel, stride, padding, groups) of the five conv layers, as in the paper
# (and in BVLC's bvlc_alexnet and CaffeNet). AlexNet.conv_layers takes a table of this form.
CONV_LAYERS = (
    ('conv1', 96, 11, 4, 0, 1),
    ('conv2', 256, 5, 1, 2, 2),
    ('conv3', 384, 3, 1, 1, 1),
    ('conv4', 384, 3, 1, 1, 2),
    ('conv5', 256, 3, 1, 1, 2),
)
# torchvision's single-tower variant (Krizhevsky 2014, "one weird trick"): other widths, conv1
# padded by 2, no groups.
TORCHVISION_CONV_LAYERS = (
    ('conv1', 64, 11, 4, 2, 1),
    ('conv2', 192, 5, 1, 2, 1),
    ('conv3', 384, 3, 1, 1, 1),
    ('conv4', 256, 3, 1, 1, 1),
    ('conv5', 256, 3, 1, 1, 1),
)
FC_LAYERS = (('fc6', 4096), ('fc7', 4096))
LAYER_NAMES = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')

# Weight std and bias value per layer for each init scheme.
INITS = {
    # The paper: every weight N(0, 0.01); bias 1 in conv2, conv4, conv5, fc6, fc7, else 0.
    'paper': {
        'std': dict.fromkeys(LAYER_NAMES, 0.01),
        'bias': {'conv1': 0., 'conv2': 1., 'conv3': 0., 'conv4': 1., 'conv5': 1., 'fc6': 1.,
                 'fc7': 1., 'fc8': 0.},
    },
    # Caffe's bvlc_alexnet: fc6/fc7 std 0.005 and biases 0.1 where the paper has 1.
    'caffe': {
        'std': {**dict.fromkeys(LAYER_NAMES, 0.01), 'fc6': 0.005, 'fc7': 0.005},
        'bias': {'conv1': 0., 'conv2': .1, 'conv3': 0., 'conv4': .1, 'conv5': .1, 'fc6': .1,
                 'fc7': .1, 'fc8': 0.},
    },
}


# What AlexNet's 'auto' implementation options become (see AlexNet and experiments/PERF.md).
# XLA:CPU: kernel gradients as matrix products, conv1 as a space-to-depth stride-1
# convolution, grouped convolutions as one convolution per group, max-pool with a hand-written
# gradient: each one measured faster there than XLA's own path (whose convolution kernel
# gradients, grouped convolutions and select-and-scatter are slow paths on XLA:CPU).
CPU_IMPLS = {'pool_impl': 'strided_argmax', 'conv_impl': 'split', 'conv_weight_grad': 'matmul',
             'conv1_impl': 'space_to_depth', 'narrow_conv_impl': 'padded_output'}
# Other backends (GPU, TPU): XLA's own implementations.
XLA_NATIVE_IMPLS = {'pool_impl': 'reduce_window', 'conv_impl': 'feature_group_count',
                    'conv_weight_grad': 'xla', 'conv1_impl': 'direct', 'narrow_conv_impl': 'xla'}


# --------------------------------------------------------------------------------------------
# Presets: the published AlexNets as AlexNet field values
# --------------------------------------------------------------------------------------------
_CAFFE_LRN = dict(lrn_size=5, lrn_k=1.0, lrn_alpha=1e-4 / 5, lrn_beta=0.75, lrn_groups=1)
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's network: AlexNet's defaults.
    'paper': {},
    # BVLC's bvlc_alexnet (Caffe): the paper's layers, but Caffe's LRN (k 1, alpha 1e-4 divided
    # by the window size as Caffe does, windows across all channels of the layer, not per
    # tower), norm before pool, Caffe's training init.
    'bvlc': dict(_CAFFE_LRN, lrn_after_pool=False, init_scheme='caffe'),
    # BVLC's bvlc_reference_caffenet: bvlc_alexnet with pool before norm.
    'caffenet': dict(_CAFFE_LRN, lrn_after_pool=True, init_scheme='caffe'),
    # torchvision's alexnet: 64-192-384-256-256, no LRN, no groups, adaptive average pooling to
    # 6x6 before fc6 (any input of at least 63 pixels), dropout before fc6 and fc7.
    'torchvision': dict(conv_layers=TORCHVISION_CONV_LAYERS, use_lrn=False, avg_pool_size=6,
                        dropout_before_fc=True),
}


@dataclasses.dataclass(frozen=True)
class PresetInputs:
  """What a preset's published weights expect and reached (ILSVRC-2012 validation).

  ``input_size``: the square crop the network takes; ``resize``: the image is first resized to
  this (Caffe: both sides warped to 256x256; torchvision and the paper: the shorter side to
  256); ``top1``/``top5``: published accuracy in %, single centre crop unless ``evaluation``
  says otherwise; ``weights``: where the weights come from.
  """
  input_size: int
  resize: int
  top1: float | None
  top5: float | None
  evaluation: str
  weights: str


PRESET_INPUTS = {
    'paper': PresetInputs(227, 256, 59.3, 81.8, 'one network, average of 10 crops (the paper)',
                          'none published by the authors; train with this project'),
    'bvlc': PresetInputs(227, 256, 57.1, 80.2, 'centre crop',
                         "BVLC Caffe model zoo bvlc_alexnet.caffemodel; ONNX model zoo "
                         "bvlcalexnet-9/-12.onnx"),
    'caffenet': PresetInputs(227, 256, 57.4, 80.4, 'centre crop',
                             'BVLC Caffe model zoo bvlc_reference_caffenet.caffemodel'),
    'torchvision': PresetInputs(224, 256, 56.522, 79.066, 'centre crop',
                                'torchvision alexnet-owt-7be5be79.pth (IMAGENET1K_V1)'),
}

# ImageNet's mean pixel in [0, 1] RGB units (fb.resnet.torch's, also torchvision's), and
# torchvision's per-channel std.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# Caffe's ImageNet mean pixel (the mean of ilsvrc_2012_mean), 0..255, in RGB order: Caffe's
# BGR (104.007, 116.669, 122.679) reversed, since our converted models take RGB.
CAFFE_MEAN_RGB = (122.679, 116.669, 104.007)


def _check_preset(name: str) -> None:
  if name not in PRESETS:
    raise ValueError(f'Unknown AlexNet preset {name!r}; use one of {", ".join(PRESETS)}.')


def preset(name: str = 'paper', **overrides) -> AlexNet:
  """The ``AlexNet`` of a named preset ('paper', 'bvlc', 'caffenet', 'torchvision').

  ``overrides`` set any other field, e.g. ``preset('bvlc', num_classes=21, dtype=jnp.bfloat16)``.
  """
  _check_preset(name)
  return AlexNet(**{**PRESETS[name], **overrides})


def preprocess(name: str, images: Array) -> Array:
  """A preset's pixel preprocessing: RGB NHWC images in 0..255 (uint8 or float) -> float32.

  The images are already resized and cropped to the preset's ``PRESET_INPUTS[name].input_size``.
  'paper': the project's input pipeline (``(pixels / 255 - IMAGENET_MEAN_RGB) * 255``: 0..255
  units minus the mean pixel); 'bvlc', 'caffenet': Caffe's (0..255 minus
  :data:`CAFFE_MEAN_RGB`); 'torchvision': ``(pixels / 255 - IMAGENET_MEAN_RGB) /
  IMAGENET_STD_RGB``. Jittable.
  """
  _check_preset(name)
  x = jnp.asarray(images).astype(jnp.float32)
  if name == 'paper':
    return (x / 255.0 - jnp.asarray(IMAGENET_MEAN_RGB, jnp.float32)) * 255.0
  if name in ('bvlc', 'caffenet'):
    return x - jnp.asarray(CAFFE_MEAN_RGB, jnp.float32)
  return (x / 255.0 - jnp.asarray(IMAGENET_MEAN_RGB, jnp.float32)) / jnp.asarray(
      IMAGENET_STD_RGB, jnp.float32)


def _axis_size(axis_name: str | None) -> int:
  return 1 if axis_name is None else lax.axis_size(axis_name)


def _gather_features(x: Array, axis_name: str | None) -> Array:
  """Concatenate the model shards' feature slices (last axis), in shard order."""
  if axis_name is None or _axis_size(axis_name) == 1:
    return x
  return lax.all_gather(x, axis_name, axis=x.ndim - 1, tiled=True)


class AlexNet(nn.Module):
  """The paper's AlexNet. ``model.apply(variables, images, train=False)`` -> logits.

  :func:`preset` builds the published variants (BVLC's, CaffeNet, torchvision's) from the
  fields below; the parameter contract (module docstring) holds for all of them.

  Attributes (defaults are the paper's):
    num_classes: size of the output layer fc8.
    dropout_rate: dropout on fc6 and fc7 when ``train=True`` (needs a 'dropout' rng).
    dropout_before_fc: False (the paper, Caffe) drops fc6's and fc7's outputs, after the ReLU;
      True (torchvision) drops fc6's and fc7's inputs (same parameters, same eval numbers).
    conv_layers: the five conv layers' geometry, rows ``(name, features, kernel, stride,
      padding, groups)`` named conv1..conv5: :data:`CONV_LAYERS` (the paper's) or
      :data:`TORCHVISION_CONV_LAYERS`.
    avg_pool_size: None (the paper) feeds pool5's map to fc6 as it is (6x6 at 227 input); an
      int ``s`` first averages it to ``s x s`` as ``torch.nn.AdaptiveAvgPool2d(s)`` does
      (torchvision: 6, so that any input of at least 63 pixels works).
    use_lrn: False drops both LRN layers (the paper's ablation; torchvision's variant).
    lrn_after_pool: False is the paper's conv -> ReLU -> LRN -> pool; True is the seed's and
      CaffeNet's conv -> ReLU -> pool -> LRN (same shapes, different numbers).
    lrn_groups: 2 keeps LRN windows inside each tower, as on the paper's two GPUs; 1 lets them
      run across all channels of the layer (Caffe).
    lrn_size, lrn_k, lrn_alpha, lrn_beta: the LRN's n, k, alpha, beta in the paper's formula
      (alpha multiplies the sum of squares; Caffe's alpha is this one times ``lrn_size``).
    init_scheme: (not ``init``, which is linen's method) 'paper' (every weight N(0, 0.01),
      bias 1 on conv2/4/5 and fc6/7, 0 elsewhere) or 'caffe' (fc6/fc7 std 0.005 and biases
      0.1 in place of 1; escapes the long plateau at ln(num_classes) that the paper's init
      can show).
    dtype: compute dtype (e.g. ``jnp.bfloat16``); None computes in the parameters' dtype.
      Logits are always returned as float32.
    param_dtype: parameter dtype (float32).
    pool_impl, lrn_impl, conv_impl, lrn_grad, conv_weight_grad, conv1_impl, narrow_conv_impl:
      numerically equivalent implementations (speed only; equal up to fp32 rounding): how
      pooling, the LRN window sum, grouped convolutions, the LRN gradient and conv kernel
      gradients are computed, whether conv1 runs as a space-to-depth stride-1 convolution, and
      whether convolutions with few output channels run with extra padding, cropped (so that
      XLA:CPU spreads them over all cores). 'auto' (the default)
      takes :data:`CPU_IMPLS` when JAX's default backend is the CPU (the fastest measured on
      XLA:CPU, experiments/PERF.md) and :data:`XLA_NATIVE_IMPLS` elsewhere (XLA's own
      convolution gradients, grouped convolutions and pooling, which GPUs and TPUs run well).
    model_axis, model_parallel_convs, model_parallel_fcs: model parallelism inside
      ``jax.shard_map`` (see the module docstring); leave ``model_axis=None`` on one device or
      in pure data parallelism.

  Softmax is not applied: use ``optax.softmax_cross_entropy`` for training and
  :func:`predict_probabilities` for predictions.
  """
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dropout_before_fc: bool = False
  conv_layers: tuple[tuple[str, int, int, int, int, int], ...] = CONV_LAYERS
  avg_pool_size: int | None = None
  use_lrn: bool = True
  lrn_after_pool: bool = False
  lrn_groups: int = 2
  lrn_size: int = 5
  lrn_k: float = 2.0
  lrn_alpha: float = 1e-4
  lrn_beta: float = 0.75
  init_scheme: Literal['paper', 'caffe'] = 'paper'
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  pool_impl: PoolImpl | Auto = 'auto'
  lrn_impl: LrnImpl = 'reduce_window'
  conv_impl: ConvImpl | Auto = 'auto'
  lrn_grad: LrnGrad = 'closed_form'
  conv_weight_grad: WeightGrad | Auto = 'auto'
  conv1_impl: Conv1Impl | Auto = 'auto'
  narrow_conv_impl: NarrowConvImpl | Auto = 'auto'
  model_axis: str | None = None
  model_parallel_convs: bool = True
  model_parallel_fcs: bool = True

  def _init_fns(self, name: str):
    if self.init_scheme not in INITS:
      raise ValueError(f"AlexNet: unknown init_scheme {self.init_scheme!r}; use 'paper' or "
                       "'caffe'.")
    scheme = INITS[self.init_scheme]
    return (nn.initializers.normal(scheme['std'][name]),
            nn.initializers.constant(scheme['bias'][name]))

  def impls(self) -> dict[str, str]:
    """Every implementation option in effect, 'auto' resolved for JAX's default backend."""
    table = CPU_IMPLS if jax.default_backend() == 'cpu' else XLA_NATIVE_IMPLS
    chosen = {name: getattr(self, name) for name in CPU_IMPLS}
    resolved = {name: table[name] if value == 'auto' else value for name, value in chosen.items()}
    return {**resolved, 'lrn_impl': self.lrn_impl, 'lrn_grad': self.lrn_grad}

  def _norm_pool(self, x: Array, lrn_groups: int, pool_impl: str) -> Array:
    def lrn(y):
      if not self.use_lrn:
        return y
      return local_response_norm(y, self.lrn_size, self.lrn_k, self.lrn_alpha, self.lrn_beta,
                                 lrn_groups, self.lrn_impl, self.lrn_grad)
    if self.lrn_after_pool:
      return lrn(max_pool(x, impl=pool_impl))
    return max_pool(lrn(x), impl=pool_impl)

  def _check_shards(self, conv_shards: int, fc_shards: int) -> None:
    """Model parallelism splits what the network allows; errors say what to change."""
    if conv_shards not in (1, 2):
      raise ValueError('Model-parallel conv layers hold one tower per device: the model axis '
                       f'must have size 2, not {conv_shards}.')
    if conv_shards > 1:
      for name, _, _, _, _, groups in self.conv_layers:
        # conv1 sees the image and conv3 gathers both towers; the others see their tower only.
        if name not in ('conv1', 'conv3') and groups % conv_shards:
          raise ValueError(f'{name} has {groups} group(s): model-parallel conv layers need '
                           'the two-tower network; set model_parallel_convs=False.')
      if self.use_lrn and self.lrn_groups % conv_shards:
        raise ValueError(f'lrn_groups={self.lrn_groups} lets LRN windows cross the towers: '
                         'model-parallel conv layers need lrn_groups=2; set '
                         'model_parallel_convs=False.')
    for name, features in FC_LAYERS + (('fc8', self.num_classes),):
      if features % fc_shards:
        raise ValueError(f'{name}: {features} outputs do not split over {fc_shards} devices.')

  def _features(self, x: Array, conv_axis: str | None, impls: dict[str, str]) -> Array:
    """conv1 .. pool5 (and the average pool, if any): images -> the map fc6 flattens."""
    conv_shards = _axis_size(conv_axis)
    for name, features, ksize, stride, pad, groups in self.conv_layers:
      if name == 'conv3':
        x = _gather_features(x, conv_axis)  # conv3 sees both towers' maps.
      kernel_init, bias_init = self._init_fns(name)
      x = TowerConv(features // conv_shards, (ksize, ksize), (stride, stride), pad,
                    max(groups // conv_shards, 1), kernel_init, bias_init, impls['conv_impl'],
                    self.dtype, self.param_dtype, weight_grad=impls['conv_weight_grad'],
                    space_to_depth=name == 'conv1' and impls['conv1_impl'] == 'space_to_depth',
                    narrow=impls['narrow_conv_impl'], name=name)(x)
      x = nn.relu(x)
      if name in ('conv1', 'conv2'):
        x = self._norm_pool(x, max(self.lrn_groups // conv_shards, 1), impls['pool_impl'])
    x = max_pool(x, impl=impls['pool_impl'])
    if self.avg_pool_size is not None:
      x = adaptive_avg_pool(x, self.avg_pool_size)
    return x

  def _classifier(self, x: Array, fc_axis: str | None, train: bool) -> Array:
    """fc6, fc7, fc8 on the flattened map: logits (model-parallel shards gathered)."""
    fc_shards = _axis_size(fc_axis)
    # One Dropout module per layer (Dropout_0, Dropout_1): each draws its own mask.
    dropout = lambda v: nn.Dropout(self.dropout_rate, deterministic=not train)(v)
    for name, features in FC_LAYERS:
      kernel_init, bias_init = self._init_fns(name)
      if self.dropout_before_fc:
        x = dropout(x)
      x = Dense(features // fc_shards, kernel_init, bias_init, self.dtype, self.param_dtype,
                name=name)(x)
      x = nn.relu(x)
      if not self.dropout_before_fc:
        x = dropout(x)
      x = _gather_features(x, fc_axis)
    kernel_init, bias_init = self._init_fns('fc8')
    x = Dense(self.num_classes // fc_shards, kernel_init, bias_init, self.dtype,
              self.param_dtype, name='fc8')(x)
    return _gather_features(x, fc_axis)

  @nn.compact
  def __call__(self, images: Array, train: bool = False) -> Array:
    """Logits (N, num_classes) in float32 for NHWC RGB images (N, 227, 227, 3) (or the
    preset's input size)."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'AlexNet expects NHWC RGB images (N, 227, 227, 3), got {images.shape}.')
    conv_axis = self.model_axis if self.model_parallel_convs else None
    fc_axis = self.model_axis if self.model_parallel_fcs else None
    self._check_shards(_axis_size(conv_axis), _axis_size(fc_axis))
    x = self._features(images.astype(self.dtype or self.param_dtype), conv_axis, self.impls())
    x = _gather_features(x, conv_axis)  # fc6 sees both towers' (6, 6, 128) maps, HWC order.
    if self.model_axis is not None and fc_axis is not None and conv_axis is None:
      # "One weird trick": convs ran data-parallel over the model axis too; the fc layers see
      # the whole model group's batch.
      x = lax.all_gather(x, self.model_axis, axis=0, tiled=True)
    x = x.reshape((x.shape[0], -1))
    return self._classifier(x, fc_axis, train).astype(jnp.float32)


def predict_probabilities(model: AlexNet, variables, images: Array) -> Array:
  """Class probabilities: softmax of the logits, averaged over crops for (N, K, H, W, 3) input.

  A 5-D input is the paper's multi-crop test (e.g. 10 crops per image): the softmax outputs of
  the K crops are averaged, as in the paper.
  """
  if images.ndim == 5:
    n, crops = images.shape[:2]
    logits = model.apply(variables, images.reshape((n * crops,) + images.shape[2:]))
    return jax.nn.softmax(logits).reshape(n, crops, -1).mean(axis=1)
  return jax.nn.softmax(model.apply(variables, images))


def count_params(params) -> int:
  """Number of scalars in a parameter tree."""
  return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
