"""Runners: one configuration, in-process (``setup()`` once, then ``step()`` -> (seconds, loss)).

The workers (``workers.py``) and the --gpu mode drive them.
"""

from __future__ import annotations

import os
import time

from experiments.bench.configs import LEARNING_RATE
from experiments.bench.configs import Config
from experiments.bench.flops import IMAGE_SIZE
from experiments.bench.model_options import model_kwargs


def _cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan')))


class JaxTrainRunner:
  """The project's jitted train step (state donated unless told) on a fixed resident batch."""

  def __init__(self, batch: int, model_kwargs: dict, num_classes: int = 1000, chain: int = 1,
               donate: bool = True, image_size: int = IMAGE_SIZE):
    self.batch, self.model_kwargs, self.num_classes, self.chain, self.donate = (
        batch, dict(model_kwargs), num_classes, chain, donate)
    self.image_size = image_size

  def setup(self) -> dict:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
    from alexnet_jax import optim  # pylint: disable=g-import-not-at-top
    from alexnet_jax import steps  # pylint: disable=g-import-not-at-top
    from alexnet_jax import unrolled_threefry  # pylint: disable=g-import-not-at-top
    model = model_lib.AlexNet(num_classes=self.num_classes, **model_kwargs(self.model_kwargs))
    tx = optim.sgd_with_injected_lr(LEARNING_RATE)
    size = self.image_size
    # Jitted (eager, init compiled 143 programs, 12.5 s at 227 px on a 2-core CPU).
    self.state = steps.jit_create_train_state(model, tx, (1, size, size, 3))(jax.random.key(0))
    step_fn, _ = steps.make_single_device_steps(model, tx, donate_state=self.donate)
    with unrolled_threefry.on_cpu():  # each new shape's draw compiles 1 s faster, same bits
      k1, k2 = jax.random.split(jax.random.key(1))
      # Pixel-scale inputs (mean-subtracted images are in about +-100).
      self.data = {
          'image': jax.random.normal(k1, (self.batch, size, size, 3), jnp.float32) * 50.0,
          'label': jax.random.randint(k2, (self.batch,), 0, self.num_classes, jnp.int32),
      }
    jax.block_until_ready((self.state, self.data))
    start = time.perf_counter()
    self.compiled = step_fn.lower(self.state, self.data).compile()
    compile_s = time.perf_counter() - start
    self._jax = jax
    return {'compile_s': compile_s, 'xla_flops': _cost_flops(self.compiled),
            'impls': model.impls(),
            'device': str(jax.devices()[0].device_kind), 'platform': jax.default_backend(),
            'jax_version': jax.__version__, 'xla_flags': os.environ.get('XLA_FLAGS', '')}

  def step(self) -> tuple[float, float]:
    start = time.perf_counter()
    for _ in range(self.chain):
      self.state, metrics = self.compiled(self.state, self.data)
    self._jax.block_until_ready((self.state, metrics))
    elapsed = (time.perf_counter() - start) / self.chain
    return elapsed, float(metrics['loss'])


class TorchTrainRunner:
  """The PyTorch twin trained with ``torch.optim.SGD`` in one of PyTorch's modes."""

  def __init__(self, batch: int, mode: str, num_classes: int = 1000,
               image_size: int = IMAGE_SIZE):
    if mode not in ('eager', 'channels_last', 'compile'):
      raise ValueError(f'Unknown PyTorch mode {mode!r}.')
    self.batch, self.mode, self.num_classes = batch, mode, num_classes
    self.image_size = image_size

  def setup(self) -> dict:
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
    from experiments.bench import torch_twin  # pylint: disable=g-import-not-at-top
    torch.manual_seed(0)
    model = torch_twin.AlexNetTwin(num_classes=self.num_classes,
                                   input_size=self.image_size).train()
    opt = torch_twin.make_sgd(model, learning_rate=LEARNING_RATE)
    x = torch.randn(self.batch, 3, self.image_size, self.image_size) * 50.0
    y = torch.randint(0, self.num_classes, (self.batch,))
    if self.mode == 'channels_last':
      model = model.to(memory_format=torch.channels_last)
      x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if self.mode == 'compile' else model

    def step():
      opt.zero_grad(set_to_none=True)
      loss = F.cross_entropy(forward(x), y)
      loss.backward()
      opt.step()
      return loss

    self._step = step
    return {'compile_s': None, 'torch_version': torch.__version__,
            'torch_threads': torch.get_num_threads(), 'device': 'cpu', 'platform': 'cpu'}

  def step(self) -> tuple[float, float]:
    start = time.perf_counter()
    loss = self._step()
    value = float(loss.item())
    return time.perf_counter() - start, value


class MatmulRunner:
  """A square ``n x n @ n x n`` matmul: the machine's practical matmul ceiling."""

  def __init__(self, framework: str, n: int, dtype: str = 'float32', chain: int = 1):
    self.framework, self.n, self.dtype, self.chain = framework, n, dtype, chain

  def _jax_setup(self) -> dict:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from alexnet_jax import unrolled_threefry  # pylint: disable=g-import-not-at-top
    with unrolled_threefry.on_cpu():  # the draws compile faster, to the same bits
      k1, k2 = jax.random.split(jax.random.key(0))
      a = jax.random.normal(k1, (self.n, self.n), jnp.float32).astype(self.dtype)
      b = jax.random.normal(k2, (self.n, self.n), jnp.float32).astype(self.dtype)
    start = time.perf_counter()
    compiled = jax.jit(jnp.dot).lower(a, b).compile()
    compile_s = time.perf_counter() - start

    def run():
      out = None
      for _ in range(self.chain):
        out = compiled(a, b)
      jax.block_until_ready(out)

    self._run = run
    return {'compile_s': compile_s, 'device': str(jax.devices()[0].device_kind),
            'platform': jax.default_backend()}

  def _torch_setup(self) -> dict:
    import torch  # pylint: disable=g-import-not-at-top
    a = torch.randn(self.n, self.n, dtype=getattr(torch, self.dtype))
    b = torch.randn(self.n, self.n, dtype=getattr(torch, self.dtype))

    def run():
      for _ in range(self.chain):
        torch.mm(a, b)

    self._run = run
    return {'compile_s': None, 'device': 'cpu', 'platform': 'cpu'}

  def setup(self) -> dict:
    info = self._jax_setup() if self.framework == 'jax' else self._torch_setup()
    return {**info, 'flops': 2 * self.n ** 3, 'n': self.n, 'dtype': self.dtype}

  def step(self) -> tuple[float, float]:
    start = time.perf_counter()
    self._run()
    return (time.perf_counter() - start) / self.chain, float('nan')


def make_runner(config: Config, spec: dict):
  """The runner of ``config``; ``spec`` holds the run's sizes (batch, matmul_size, ...)."""
  batch, num_classes = spec['batch'], spec.get('num_classes', 1000)
  size = spec.get('image_size', IMAGE_SIZE)
  if config.kind == 'jax':
    return JaxTrainRunner(batch, config.model, num_classes, donate=config.donate,
                          image_size=size)
  if config.kind == 'torch':
    return TorchTrainRunner(batch, config.mode, num_classes, image_size=size)
  if config.kind in ('matmul_jax', 'matmul_torch'):
    return MatmulRunner(config.kind.split('_')[1], spec['matmul_size'])
  if config.kind.startswith('infer_'):
    from experiments.bench import inference  # pylint: disable=g-import-not-at-top
    return inference.make_runner(config, spec)
  raise ValueError(f'Unknown configuration kind {config.kind!r}.')
