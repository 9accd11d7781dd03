"""Pooling over NHWC maps: the overlapping max-pool (XLA's own, or with a hand-written
gradient) and PyTorch's adaptive average pool.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

Array = jax.Array

PoolImpl = Literal['reduce_window', 'strided_argmax']
# ``(x, window, stride) -> pooled``: a max-pool formulation an experiment passes as ``impl``
# (experiments/bench/model_options.py holds the strided-slices one).
PoolFn = Callable[[Array, int, int], Array]


def pool_views(x: Array, window: int, stride: int) -> list[Array]:
  """The window*window strided views of x (VALID windows), in row-major window order: the
  elementwise max of them is the max-pool."""
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
  for k, view in enumerate(pool_views(x, window, stride)):
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
  # planes interleave back into the input: far less memory traffic than the autodiff of the max
  # of the strided views (one input-sized, interior-padded scatter per window element).
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
             impl: PoolImpl | PoolFn = 'reduce_window') -> Array:
  """Overlapping max-pooling (window 3, stride 2, no padding) over NHWC maps.

  'reduce_window' is XLA's own (``flax.linen.max_pool``; its gradient is a select-and-scatter,
  slow on XLA:CPU). 'strided_argmax' computes the same max from the window*window strided views
  with the index of the first maximum and a hand-written gradient (a ``jax.custom_vjp``) that
  routes each output's gradient to that element through the input's stride-phase planes; ties
  go to the first maximum, as with 'reduce_window'. A :data:`PoolFn` is an experiment's own
  formulation (see experiments/PERF.md).
  """
  if impl == 'reduce_window':
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding='VALID')
  if impl == 'strided_argmax':
    return _max_pool_argmax(x, window, stride)
  if callable(impl):
    return impl(x, window, stride)
  raise ValueError(f"pool impl must be 'reduce_window', 'strided_argmax' or a pooling "
                   f"function (experiments/bench/model_options.py), got {impl!r}.")


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

