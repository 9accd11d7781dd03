"""conv1 forward: XLA's space-to-depth convolution vs im2col + one GEMM vs per-tap GEMMs.

    python experiments/conv1_gemm.py [BATCH]

fp32, batch 32 by default; prints each form's largest difference from the convolution and its
median forward time over 6 alternated calls. Recorded in experiments/PERF.md (attempt 11).
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.ops import conv as conv_ops


def space_to_depth(x, kernel, stride=4):
  """``model.space_to_depth_blocks`` and conv1's output size."""
  blocks, block_kernel = conv_ops.space_to_depth_blocks(x, kernel, stride)
  out_h = (x.shape[1] - kernel.shape[0]) // stride + 1
  out_w = (x.shape[2] - kernel.shape[1]) // stride + 1
  return blocks, block_kernel, out_h, out_w


def im2col_gemm(x, kernel):
  """All taps' views concatenated on the channel axis, then one (M, 432) x (432, 96) GEMM."""
  xb, k, out_h, out_w = space_to_depth(x, kernel)
  bh, bw, cin, cout = k.shape
  patches = jnp.concatenate([xb[:, i:i + out_h, j:j + out_w, :]
                             for i in range(bh) for j in range(bw)], -1)
  y = jnp.dot(patches.reshape(-1, bh * bw * cin), k.reshape(-1, cout))
  return y.reshape(x.shape[0], out_h, out_w, cout)


def per_tap_gemms(x, kernel):
  """One (M, 48) x (48, 96) GEMM per tap, accumulated."""
  xb, k, out_h, out_w = space_to_depth(x, kernel)
  bh, bw, cin, _ = k.shape
  acc = None
  for i in range(bh):
    for j in range(bw):
      t = jnp.dot(xb[:, i:i + out_h, j:j + out_w, :].reshape(-1, cin), k[i, j])
      acc = t if acc is None else acc + t
  return acc.reshape(x.shape[0], out_h, out_w, -1)


def main(argv):
  batch = int(argv[1]) if len(argv) > 1 else 32
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(0, 60, (batch, 227, 227, 3)), jnp.float32)
  kernel = jnp.asarray(rng.normal(0, 0.01, (11, 11, 3, 96)), jnp.float32)
  forms = {'space_to_depth conv (default)':
               jax.jit(lambda a, b: conv_ops.space_to_depth_conv(a, b, 4, 'matmul')),
           'im2col + one GEMM': jax.jit(im2col_gemm),
           'per-tap GEMMs': jax.jit(per_tap_gemms)}
  reference = np.asarray(forms['space_to_depth conv (default)'](x, kernel))
  for name, fn in forms.items():
    diff = float(np.abs(np.asarray(fn(x, kernel)) - reference).max())
    print(f'{name}: max |difference| {diff:.3g}')
  times = {name: [] for name in forms}
  for _ in range(7):
    for name, fn in forms.items():
      start = time.perf_counter()
      fn(x, kernel).block_until_ready()
      times[name].append(time.perf_counter() - start)
  for name, ts in times.items():
    print(f'{name}: forward {1000 * np.median(ts[1:]):.1f} ms (batch {batch})')


if __name__ == '__main__':
  main(sys.argv)
