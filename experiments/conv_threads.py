"""How XLA:CPU (YNNPACK) runs AlexNet's convolutions: time and threads per shape.

    python experiments/conv_threads.py [BATCH]

For each convolution: median wall time of 5 calls and CPU time / wall time (1.0: one thread;
2.0: both cores of this VM). Shows the findings of experiments/PERF.md, attempts 13, 13b
and 19: a VALID convolution runs about half as fast as the same convolution written as a
padded one and cropped; the convolutions with few output channels (conv1's 96, conv2's input
gradient with 48 per group) run on one thread (YNNPACK); and with one more pixel of padding
(an output larger than the input, which YNNPACK declines) XLA:CPU runs them on both cores
(``narrow_conv_impl='padded_output'``, the model's CPU default).
"""
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DN = ('NHWC', 'HWIO', 'NHWC')


def conv(x, kernel, pad):
  return lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                  dimension_numbers=DN)


def timed(fn, *args, reps=5):
  """(median wall ms, CPU time / wall time) over ``reps`` calls after one warm-up call."""
  jax.block_until_ready(fn(*args))
  walls, cpus = [], []
  for _ in range(reps):
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    walls.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
  wall = float(np.median(walls))
  return 1000 * wall, float(np.median(cpus)) / wall


def main(argv):
  batch = int(argv[1]) if len(argv) > 1 else 32
  rng = np.random.default_rng(0)

  def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)

  blocks, block_kernel = normal(batch, 57, 57, 48), normal(3, 3, 48, 96)
  cases = {
      'conv1 in blocks, VALID 57x57 -> 55x55':
          (jax.jit(lambda x, k: conv(x, k, 0)), blocks, block_kernel),
      'conv1 in blocks, padded 57x57 -> 57x57, cropped':
          (jax.jit(lambda x, k: conv(x, k, 1)[:, 1:-1, 1:-1]), blocks, block_kernel),
      'conv1 in blocks, padded by 2 -> 59x59 (larger than its input), cropped':
          (jax.jit(lambda x, k: conv(x, k, 2)[:, 2:-2, 2:-2]), blocks, block_kernel),
      'conv2 forward, one group (48 -> 128 channels)':
          (jax.jit(lambda x, k: conv(x, k, 2)), normal(batch, 27, 27, 48), normal(5, 5, 48, 128)),
      'conv2 input gradient, one group (128 -> 48 channels)':
          (jax.jit(lambda x, k: conv(x, k, 2)), normal(batch, 27, 27, 128), normal(5, 5, 128, 48)),
      'conv2 input gradient, one group, padded by 3 -> 29x29, cropped':
          (jax.jit(lambda x, k: conv(x, k, 3)[:, 1:-1, 1:-1]), normal(batch, 27, 27, 128),
           normal(5, 5, 128, 48)),
      'conv3 forward (256 -> 384 channels)':
          (jax.jit(lambda x, k: conv(x, k, 1)), normal(batch, 13, 13, 256), normal(3, 3, 256, 384)),
  }
  valid = np.asarray(cases['conv1 in blocks, VALID 57x57 -> 55x55'][0](blocks, block_kernel))
  cropped = np.asarray(cases['conv1 in blocks, padded 57x57 -> 57x57, cropped'][0](
      blocks, block_kernel))
  print(f'batch {batch}; padded-and-cropped conv1 equals VALID: '
        f'{bool(np.array_equal(valid, cropped))}')
  for name, (fn, *args) in cases.items():
    ms, threads = timed(fn, *args)
    print(f'{name}: {ms:.0f} ms, CPU/wall {threads:.2f}')


if __name__ == '__main__':
  main(sys.argv)
