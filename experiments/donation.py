"""Peak RSS and step time of the default train step with and without donating the state.

    python experiments/donation.py donate 128
    python experiments/donation.py keep 128

One configuration per process (ru_maxrss is the process's high-water mark): run both and compare.
Recorded in experiments/PERF.md (attempt 9).
"""
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import train


def main(argv):
  if len(argv) != 3 or argv[1] not in ('donate', 'keep'):
    raise SystemExit('usage: python experiments/donation.py donate|keep BATCH')
  donate, batch_size = argv[1] == 'donate', int(argv[2])
  model = model_lib.AlexNet(num_classes=1000)
  tx = optim.sgd_with_injected_lr(0.01)
  state = train.create_train_state(jax.random.key(0), model, tx)
  step = jax.jit(lambda s, b: train.train_step(s, b, model=model, tx=tx),
                 donate_argnums=0 if donate else ())
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.normal(0, 60, (batch_size, 227, 227, 3)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 1000, batch_size), jnp.int32)}
  times = []
  for _ in range(6):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f'donate={donate} batch={batch_size}: step median {1000 * np.median(times[2:]):.0f} ms '
        f'(steps 3-6), peak RSS {peak:.0f} MiB')


if __name__ == '__main__':
  main(sys.argv)
