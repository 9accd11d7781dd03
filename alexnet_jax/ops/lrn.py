"""Local response normalisation across channels (the paper's section 3.3), channels last.

The window sum runs as ``lax.reduce_window`` (or as a formulation an experiment passes in: see
experiments/lrn_formulations.py); the gradient by autodiff or in closed form (a
``jax.custom_vjp``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

Array = jax.Array


def lrn_window(size: int) -> tuple[int, int]:
  """Channels before and after ``c`` in the window of channel ``c``: ``(size // 2, (size - 1) // 2)``.

  For odd sizes (the paper's 5) this is the symmetric window ``c - 2 .. c + 2``. For even sizes it
  follows PyTorch and Caffe (one more channel before than after).
  """
  return size // 2, (size - 1) // 2


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


# ``(squares, size, groups) -> window sums``: for each channel c (last axis), the sum of the
# squares over its window (:func:`lrn_window`), clipped at its group's edges. An experiment may
# pass its own formulation as ``impl`` (experiments/lrn_formulations.py holds three).
WindowSum = Callable[[Array, int, int], Array]
LrnImpl = Literal['reduce_window']


def _window_sum(impl: LrnImpl | WindowSum) -> WindowSum:
  if impl == 'reduce_window':
    return _window_sum_reduce_window
  if callable(impl):
    return impl
  raise ValueError(f"LRN: impl must be 'reduce_window' or a window-sum function (the other "
                   f"formulations are in experiments/lrn_formulations.py), got {impl!r}.")


LrnGrad = Literal['autodiff', 'closed_form']


def _flip_within_groups(v: Array, groups: int) -> Array:
  shape = v.shape
  return v.reshape(shape[:-1] + (groups, shape[-1] // groups))[..., ::-1].reshape(shape)


def _lrn_scale(xf: Array, size: int, k: float, alpha: float, beta: float, groups: int,
               window_sum: WindowSum) -> tuple[Array, Array]:
  """``(s, s ** -beta)`` with ``s = k + alpha * window_sum(x^2)``."""
  scale = k + alpha * window_sum(xf * xf, size, groups)
  if beta == 0.75:
    # x ** -0.75 = rsqrt(x) * rsqrt(sqrt(x)): two cheap ops instead of exp(log(x) * -0.75).
    return scale, lax.rsqrt(scale) * lax.rsqrt(jnp.sqrt(scale))
  return scale, scale ** (-beta)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _lrn_closed_form(xf: Array, size: int, k: float, alpha: float, beta: float, groups: int,
                     window_sum: WindowSum) -> Array:
  return xf * _lrn_scale(xf, size, k, alpha, beta, groups, window_sum)[1]


def _lrn_closed_form_fwd(xf, size, k, alpha, beta, groups, window_sum):
  scale, inv = _lrn_scale(xf, size, k, alpha, beta, groups, window_sum)
  return xf * inv, (xf, inv, inv / scale)


def _lrn_closed_form_bwd(size, k, alpha, beta, groups, window_sum, residuals, dy):
  # y_c = x_c s_c^-b with s_c = k + a sum_{j in W(c)} x_j^2, so
  # dx_i = dy_i s_i^-b - 2ab x_i sum_{c: i in W(c)} dy_c x_c s_c^(-b-1).
  # {c: i in W(c)} is the mirrored window (after, before): for odd sizes W itself; for even
  # sizes the window sum of the channel-reversed (within each group) input, reversed back.
  xf, inv, inv_over_scale = residuals
  t = dy * xf * inv_over_scale
  before, after = lrn_window(size)
  if before == after:
    back = window_sum(t, size, groups)
  else:
    back = _flip_within_groups(window_sum(_flip_within_groups(t, groups), size, groups), groups)
  return (dy * inv - (2.0 * alpha * beta) * xf * back,)


_lrn_closed_form.defvjp(_lrn_closed_form_fwd, _lrn_closed_form_bwd)


def local_response_norm(x: Array, size: int = 5, k: float = 2.0, alpha: float = 1e-4,
                        beta: float = 0.75, groups: int = 1,
                        impl: LrnImpl | WindowSum = 'reduce_window',
                        grad: LrnGrad = 'autodiff') -> Array:
  """The paper's LRN over the last (channel) axis, as a function.

  ``b[c] = a[c] / (k + alpha * sum_{j in window(c)} a[j]^2) ** beta``: a *sum* of squares, alpha
  not divided by ``size``; windows are clipped at the channel edges and never cross a group
  boundary (the channels are split into ``groups`` equal contiguous groups).

  ``grad`` picks how the gradient is computed: 'autodiff' differentiates the forward ops;
  'closed_form' (a ``jax.custom_vjp``) uses
  ``dx = dy s^-beta - 2 alpha beta x W'(dy x s^(-beta-1))`` with ``W'`` the mirrored window
  sum: one window sum and a few elementwise ops instead of the transposes of every forward op
  (see experiments/PERF.md). Same numbers up to fp32 rounding.

  ``impl`` computes the window sum: 'reduce_window' (``lax.reduce_window``, XLA's own path, the
  fastest measured on XLA:CPU) or a :data:`WindowSum` function of the same numbers (the
  formulations experiments/lrn_formulations.py compares: a banded matrix product, a cumulative
  sum, shifted slices).
  """
  channels = x.shape[-1]
  if channels % groups:
    raise ValueError(f'LRN: {channels} channels do not split into {groups} equal groups.')
  if size < 1:
    raise ValueError(f'LRN: size must be at least 1, got {size}.')
  if grad not in ('autodiff', 'closed_form'):
    raise ValueError(f"LRN: grad must be 'autodiff' or 'closed_form', got {grad!r}.")
  window_sum = _window_sum(impl)
  # Squares and their sum in at least fp32: bf16 sums of squares lose the small alpha term.
  compute_dtype = jnp.promote_types(x.dtype, jnp.float32)
  xf = x.astype(compute_dtype)
  if grad == 'closed_form':
    return _lrn_closed_form(xf, size, k, alpha, beta, groups, window_sum).astype(x.dtype)
  return (xf * _lrn_scale(xf, size, k, alpha, beta, groups, window_sum)[1]).astype(x.dtype)


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
  impl: LrnImpl | WindowSum = 'reduce_window'
  grad: LrnGrad = 'autodiff'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return local_response_norm(x, self.size, self.k, self.alpha, self.beta, self.groups,
                               self.impl, self.grad)

