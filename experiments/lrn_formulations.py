"""Times the three LRN formulations (forward + backward) on AlexNet's two LRN inputs.

    python experiments/lrn_formulations.py

Prints a markdown table of median milliseconds per forward+backward call on this machine's CPU.
The fastest is the default ``impl`` of ``alexnet_jax.model.local_response_norm``.
"""
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model import local_response_norm

IMPLS = ('shifted_slices', 'matmul', 'reduce_window', 'cumsum')
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
    for impl in IMPLS:
      loss = lambda y, impl=impl: jnp.sum(local_response_norm(y, groups=2, impl=impl) ** 2)
      row.append(time_call(jax.jit(jax.value_and_grad(loss)), x))
    rows.append(row)
  print(f'LRN forward+backward, batch {batch}, fp32, median ms over 15 calls; '
        f'{platform.processor() or platform.machine()}, {jax.devices()[0].platform}, '
        f'jax {jax.__version__}')
  print('| input | ' + ' | '.join(IMPLS) + ' |')
  print('|---' * (len(IMPLS) + 1) + '|')
  for label, *ms in rows:
    print(f'| {label} | ' + ' | '.join(f'{t:.1f}' for t in ms) + ' |')
  print('command: python experiments/lrn_formulations.py')


if __name__ == '__main__':
  main()
