"""Convolutions in the network's layouts (NHWC x HWIO), computed in shapes XLA:CPU runs fast.

Grouped convolutions split per group, kernel gradients as matrix products, a strided conv1 on
space-to-depth blocks, narrow convolutions padded and cropped: every option gives XLA's
numbers (up to fp32 rounding). :class:`TowerConv` is the layer AlexNet builds from them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

Array = jax.Array

Dtype = Any

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

