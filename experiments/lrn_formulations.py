"""The LRN window-sum formulations, timed forward + backward on AlexNet's two LRN inputs.

    python experiments/lrn_formulations.py

Prints a markdown table of median milliseconds per forward+backward call on this machine's CPU.
The fastest, 'reduce_window' (XLA's own ``lax.reduce_window``), is the only one the package
keeps (``alexnet_jax.ops.lrn``); the others live here and reach the model as functions:
``local_response_norm(x, impl=WINDOW_SUMS['matmul'])``, ``AlexNet(lrn_impl=...)``, or by name
in the benchmark's configurations (``experiments/bench/model_options.py``). All compute the
same numbers (tests/test_lrn.py, tests/test_speed_options.py).
"""
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import jax  # noqa: E402  (after the path above)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from alexnet_jax.ops.lrn import local_response_norm, lrn_window  # noqa: E402

Array = jax.Array


def _band_matrix(channels: int, size: int, groups: int) -> np.ndarray:
  """(C, C) 0/1 matrix: ``B[j, c] = 1`` when channel j is in channel c's window and group."""
  before, after = lrn_window(size)
  idx = np.arange(channels)
  group = idx // (channels // groups)
  diff = idx[:, None] - idx[None, :]  # j - c
  inside = (diff >= -before) & (diff <= after) & (group[:, None] == group[None, :])
  return inside.astype(np.float32)


def window_sum_matmul(sq: Array, size: int, groups: int) -> Array:
  """The window sums as one product with a banded (C, C) matrix, block-diagonal per group."""
  band = jnp.asarray(_band_matrix(sq.shape[-1], size, groups), dtype=sq.dtype)
  return jnp.dot(sq, band, precision=lax.Precision.HIGHEST)


def _grouped(sq: Array, groups: int) -> Array:
  return sq.reshape(sq.shape[:-1] + (groups, sq.shape[-1] // groups))


def window_sum_cumsum(sq: Array, size: int, groups: int) -> Array:
  """The window sums as differences of a cumulative sum over each group's channels."""
  before, after = lrn_window(size)
  grouped = _grouped(sq, groups)
  pad = [(0, 0)] * (grouped.ndim - 1) + [(before + 1, after)]
  csum = jnp.cumsum(jnp.pad(grouped, pad), axis=-1)
  summed = csum[..., size:] - csum[..., :-size]
  return summed.reshape(sq.shape)


def window_sum_shifted_slices(sq: Array, size: int, groups: int) -> Array:
  """The window sums as the sum of ``size`` shifted views of each group's zero-padded channels."""
  before, after = lrn_window(size)
  grouped = _grouped(sq, groups)
  width = grouped.shape[-1]
  pad = [(0, 0)] * (grouped.ndim - 1) + [(before, after)]
  padded = jnp.pad(grouped, pad)
  summed = sum(padded[..., i:i + width] for i in range(size))
  return summed.reshape(sq.shape)


# Name -> what ``local_response_norm``'s ``impl`` (and ``AlexNet.lrn_impl``) takes: the package's
# own 'reduce_window' and this experiment's functions.
WINDOW_SUMS = {
    'shifted_slices': window_sum_shifted_slices,
    'matmul': window_sum_matmul,
    'reduce_window': 'reduce_window',
    'cumsum': window_sum_cumsum,
}
SHAPES = {'norm1 (N,55,55,96)': (55, 55, 96), 'norm2 (N,27,27,256)': (27, 27, 256)}


def time_call(fn, *args, repeats=15):
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def main(batch=32):
  rows = []
  for label, shape in SHAPES.items():
    x = jax.random.normal(jax.random.key(0), (batch,) + shape)
    row = [label]
    for impl in WINDOW_SUMS.values():
      loss = lambda y, impl=impl: jnp.sum(local_response_norm(y, groups=2, impl=impl) ** 2)
      row.append(time_call(jax.jit(jax.value_and_grad(loss)), x))
    rows.append(row)
  print(f'LRN forward+backward, batch {batch}, fp32, median ms over 15 calls; '
        f'{platform.processor() or platform.machine()}, {jax.devices()[0].platform}, '
        f'jax {jax.__version__}')
  print('| input | ' + ' | '.join(WINDOW_SUMS) + ' |')
  print('|---' * (len(WINDOW_SUMS) + 1) + '|')
  for label, *ms in rows:
    print(f'| {label} | ' + ' | '.join(f'{t:.1f}' for t in ms) + ' |')
  print('command: python experiments/lrn_formulations.py')


if __name__ == '__main__':
  main()
