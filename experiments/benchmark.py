"""Training-step speed of alexnet_jax against its PyTorch twin, in one run, on this machine.

    python experiments/benchmark.py                      # CPU: batch 32 and 128, fp32
    python experiments/benchmark.py --readme README.md   # ... and refresh README's table
    python experiments/benchmark.py --profile-layers     # where the step's time goes, per layer
    python experiments/benchmark.py --gpu                # one NVIDIA GPU: bf16, batch 128..1024

What one step is: forward, softmax cross-entropy, backward and the paper's SGD update (momentum
0.9, weight decay 5e-4) on a device-resident synthetic batch, fp32. JAX runs the project's own
step (``train.make_single_device_steps`` over ``optim.sgd_with_injected_lr``, one CPU device);
PyTorch runs ``alexnet_jax.torch_twin`` (same layers, ``groups=2`` convs, per-tower LRN,
dropout, ``torch.optim.SGD``) in its usual modes: eager NCHW, channels_last, ``torch.compile``.

How the configurations are compared. Each configuration lives in its own worker subprocess
(so that its peak RSS is its own: ``ru_maxrss`` of a process that builds, compiles and runs only
that configuration). Workers start one after another (compile times are not inflated by each
other), then the parent runs rounds: in each round every worker runs one timed step while the
others wait idle on a pipe, in an order rotated each round, with a short pause between steps (so
one library's spinning thread pool does not steal the next one's cores). A change of machine load
during the run therefore affects every configuration alike: this is what "alternating in one
run" means here. The medians of the timed steps (after the warm-up steps) are reported.

The machine's fp32 matmul ceiling (a large square matmul, JAX and PyTorch each) is measured in
the same rounds; each configuration's achieved GFLOP/s counts the step's FLOPs once,
analytically (2 x MACs of every conv and dense layer, forward plus both backward products; conv1
has no input gradient) and as XLA's cost analysis of the compiled step reports them.

Output: a markdown table on stdout (and ``--markdown``), every raw number in ``--json``
(``experiments/results/benchmark.json`` by default). Without torch (the ``compare`` extra) the
PyTorch configurations are skipped with a note and the JAX side still runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import select
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

SCRIPT = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(SCRIPT))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
from alexnet_jax import xla_flags  # noqa: E402  (no JAX import: the workers choose the flags)
DEFAULT_JSON = os.path.join(REPO, 'experiments', 'results', 'benchmark.json')
README_START = '<!-- benchmark:start -->'
README_END = '<!-- benchmark:end -->'
# Every step trains on the same synthetic batch: the paper's rate (0.01) makes the loss diverge
# to inf/NaN within a few dozen steps there. The rate is a run-time value in both frameworks
# (an injected hyperparameter in JAX), so a small one costs exactly what the paper's does.
LEARNING_RATE = 1e-4

# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------
# (name, output h=w, out channels, kernel, in channels per group): the weighted layers.
_CONV_GEOMETRY = (
    ('conv1', 55, 96, 11, 3),
    ('conv2', 27, 256, 5, 48),
    ('conv3', 13, 384, 3, 256),
    ('conv4', 13, 384, 3, 192),
    ('conv5', 13, 256, 3, 192),
)


def analytic_flops(batch: int, num_classes: int = 1000) -> dict[str, Any]:
  """FLOPs of one training step, counted from the layer table (multiply-add = 2 FLOPs).

  Forward: 2 x MACs of every conv and dense layer. Backward: the weight gradient costs the same
  again, and so does the input gradient, except for conv1 (nobody needs the images' gradient).
  Elementwise work (ReLU, LRN, pooling, dropout, softmax, the SGD update) is left out: it is
  under 1% of the total and is not matmul-like work that the ceiling measures.
  """
  layers = {}
  for name, hw, cout, k, cin in _CONV_GEOMETRY:
    layers[name] = hw * hw * cout * k * k * cin
  for name, fan_in, fan_out in (('fc6', 6 * 6 * 256, 4096), ('fc7', 4096, 4096),
                                ('fc8', 4096, num_classes)):
    layers[name] = fan_in * fan_out
  per_image = {}
  for name, macs in layers.items():
    fwd = 2 * macs
    per_image[name] = {'forward': fwd, 'weight_grad': fwd,
                       'input_grad': 0 if name == 'conv1' else fwd}
  forward = sum(v['forward'] for v in per_image.values())
  total = sum(sum(v.values()) for v in per_image.values())
  return {'per_image_by_layer': per_image, 'forward_per_image': forward,
          'step_per_image': total, 'step': total * batch, 'batch': batch}


# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
  """One thing to time: a framework, its options, and a short name."""
  name: str
  kind: str                      # 'jax', 'torch', 'matmul_jax', 'matmul_torch'
  label: str
  model: dict = dataclasses.field(default_factory=dict)  # AlexNet kwargs (JAX)
  mode: str = 'eager'            # torch: 'eager', 'channels_last', 'compile'
  xla_flags: str = ''            # extra XLA_FLAGS for this JAX worker
  donate: bool = True            # JAX: the step reuses the donated state's buffers
  env: dict = dataclasses.field(default_factory=dict)  # extra environment of the worker

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


PRESETS: dict[str, Config] = {c.name: c for c in (
    Config('matmul_jax', 'matmul_jax', 'fp32 matmul, JAX (ceiling)'),
    Config('matmul_torch', 'matmul_torch', 'fp32 matmul, PyTorch (ceiling)'),
    Config('torch_eager', 'torch', 'PyTorch eager NCHW', mode='eager'),
    Config('torch_channels_last', 'torch', 'PyTorch channels_last', mode='channels_last'),
    Config('torch_compile', 'torch', 'PyTorch torch.compile', mode='compile'),
    # What `python -m alexnet_jax.main` runs: the model's defaults and the project's XLA flags.
    Config('jax_default', 'jax', 'JAX, model defaults and XLA flags (the main job)',
           xla_flags=' '.join(xla_flags.RECOMMENDED_CPU_FLAGS)),
    # The issue's starting points, every implementation option spelled out.
    Config('jax_fgc', 'jax', 'JAX, feature_group_count=2, jnp (shifted-slices) LRN',
           model={'conv_impl': 'feature_group_count', 'lrn_impl': 'shifted_slices',
                  'pool_impl': 'reduce_window', 'lrn_grad': 'autodiff',
                  'conv_weight_grad': 'xla', 'conv1_impl': 'direct'}),
    Config('jax_split_rw', 'jax', 'JAX, groups as two convs, LRN by reduce_window (before)',
           model={'conv_impl': 'split', 'lrn_impl': 'reduce_window',
                  'pool_impl': 'strided_slices', 'lrn_grad': 'autodiff',
                  'conv_weight_grad': 'xla', 'conv1_impl': 'direct'}),
    Config('jax_no_xla_flags', 'jax', 'JAX, model defaults, without the project\'s XLA flags'),
    Config('jax_bf16', 'jax', 'JAX, model defaults, bf16 compute', model={'dtype': 'bfloat16'}),
    Config('jax_no_donation', 'jax', 'JAX, model defaults, state not donated', donate=False),
)}
DEFAULT_CONFIGS = ('matmul_jax', 'matmul_torch', 'torch_eager', 'torch_channels_last',
                   'torch_compile', 'jax_default', 'jax_split_rw')


def parse_config(text: str) -> Config:
  """A preset name, or ``name={json}`` with the Config fields (``kind`` and ``label`` needed)."""
  if text in PRESETS:
    return PRESETS[text]
  if '=' in text:
    name, spec = text.split('=', 1)
    fields = json.loads(spec)
    base = PRESETS.get(fields.pop('base', ''), None)
    if base is not None:
      fields = {**base.to_json(), **fields, 'name': name,
                'model': {**base.model, **fields.get('model', {})}}
    fields['name'] = name
    return Config(**fields)
  raise SystemExit(f'Unknown configuration {text!r}: use one of {sorted(PRESETS)} or '
                   'name={"kind": ..., "label": ..., "model": {...}, "xla_flags": ...} '
                   '(or {"base": "<preset>", ...}).')


def torch_available() -> bool:
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


# --------------------------------------------------------------------------------------------
# Runners: one configuration, in-process. Workers and the --gpu mode drive them.
# --------------------------------------------------------------------------------------------
def _rss_mib() -> float:
  import psutil  # pylint: disable=g-import-not-at-top
  return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def _jax_dtype(name):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return None if name in (None, 'none') else jnp.dtype(name)


class JaxTrainRunner:
  """The project's jitted train step (state donated unless told) on a fixed resident batch."""

  def __init__(self, batch: int, model_kwargs: dict, num_classes: int = 1000, chain: int = 1,
               donate: bool = True):
    self.batch, self.model_kwargs, self.num_classes, self.chain, self.donate = (
        batch, dict(model_kwargs), num_classes, chain, donate)

  def setup(self) -> dict:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
    from alexnet_jax import optim  # pylint: disable=g-import-not-at-top
    from alexnet_jax import train  # pylint: disable=g-import-not-at-top
    kwargs = dict(self.model_kwargs)
    if 'dtype' in kwargs:
      kwargs['dtype'] = _jax_dtype(kwargs['dtype'])
    model = model_lib.AlexNet(num_classes=self.num_classes, **kwargs)
    tx = optim.sgd_with_injected_lr(LEARNING_RATE)
    self.state = train.create_train_state(jax.random.key(0), model, tx)
    step_fn, _ = train.make_single_device_steps(model, tx, donate_state=self.donate)
    k1, k2 = jax.random.split(jax.random.key(1))
    # Pixel-scale inputs (mean-subtracted images are in about +-100).
    self.data = {
        'image': jax.random.normal(k1, (self.batch, 227, 227, 3), jnp.float32) * 50.0,
        'label': jax.random.randint(k2, (self.batch,), 0, self.num_classes, jnp.int32),
    }
    jax.block_until_ready((self.state, self.data))
    start = time.perf_counter()
    self.compiled = step_fn.lower(self.state, self.data).compile()
    compile_s = time.perf_counter() - start
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self._jax = jax
    return {'compile_s': compile_s, 'xla_flops': float(cost.get('flops', float('nan'))),
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


def xla_step_flops(batch: int, num_classes: int = 1000) -> float:
  """XLA's cost analysis of the train step differentiated by XLA itself (no custom VJPs).

  The network's FLOP count from XLA's side. The step as configured may compute kernel
  gradients in a ``lax.scan``, whose body XLA's cost analysis counts once, not once per
  iteration: so the count is taken from the XLA-native formulation of the same step.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax import optim  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  model = model_lib.AlexNet(num_classes=num_classes, **model_lib.XLA_NATIVE_IMPLS)
  tx = optim.sgd_with_injected_lr(LEARNING_RATE)
  state = jax.eval_shape(lambda: train.create_train_state(jax.random.key(0), model, tx))
  batch_shapes = {'image': jax.ShapeDtypeStruct((batch, 227, 227, 3), jnp.float32),
                  'label': jax.ShapeDtypeStruct((batch,), jnp.int32)}
  step_fn, _ = train.make_single_device_steps(model, tx)
  cost = step_fn.lower(state, batch_shapes).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def xla_step_flops_subprocess(batch: int) -> float:
  """:func:`xla_step_flops` in a fresh one-device process (the parent never imports JAX)."""
  proc = subprocess.run([sys.executable, SCRIPT, '--xla-flops', str(batch)],
                        capture_output=True, text=True, check=False,
                        env=worker_env(Config('xla_flops', 'jax', 'xla_flops')))
  if proc.returncode:
    raise RuntimeError(f'XLA FLOP count failed:\n{proc.stderr[-3000:]}')
  return float(proc.stdout.strip().splitlines()[-1])


class TorchTrainRunner:
  """``alexnet_jax.torch_twin`` trained with ``torch.optim.SGD`` in one of PyTorch's modes."""

  def __init__(self, batch: int, mode: str, num_classes: int = 1000):
    if mode not in ('eager', 'channels_last', 'compile'):
      raise ValueError(f'Unknown PyTorch mode {mode!r}.')
    self.batch, self.mode, self.num_classes = batch, mode, num_classes

  def setup(self) -> dict:
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
    from alexnet_jax import torch_twin  # pylint: disable=g-import-not-at-top
    torch.manual_seed(0)
    model = torch_twin.AlexNetTwin(num_classes=self.num_classes).train()
    opt = torch_twin.make_sgd(model, learning_rate=LEARNING_RATE)
    x = torch.randn(self.batch, 3, 227, 227) * 50.0
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

  def setup(self) -> dict:
    if self.framework == 'jax':
      import jax  # pylint: disable=g-import-not-at-top
      import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
      k1, k2 = jax.random.split(jax.random.key(0))
      a = jax.random.normal(k1, (self.n, self.n), jnp.float32).astype(self.dtype)
      b = jax.random.normal(k2, (self.n, self.n), jnp.float32).astype(self.dtype)
      fn = jax.jit(jnp.dot)
      start = time.perf_counter()
      compiled = fn.lower(a, b).compile()
      compile_s = time.perf_counter() - start

      def run():
        out = None
        for _ in range(self.chain):
          out = compiled(a, b)
        jax.block_until_ready(out)

      self._run = run
      info = {'compile_s': compile_s, 'device': str(jax.devices()[0].device_kind),
              'platform': jax.default_backend()}
    else:
      import torch  # pylint: disable=g-import-not-at-top
      a = torch.randn(self.n, self.n, dtype=getattr(torch, self.dtype))
      b = torch.randn(self.n, self.n, dtype=getattr(torch, self.dtype))

      def run():
        for _ in range(self.chain):
          torch.mm(a, b)

      self._run = run
      info = {'compile_s': None, 'device': 'cpu', 'platform': 'cpu'}
    info['flops'] = 2 * self.n ** 3
    info['n'] = self.n
    info['dtype'] = self.dtype
    return info

  def step(self) -> tuple[float, float]:
    start = time.perf_counter()
    self._run()
    return (time.perf_counter() - start) / self.chain, float('nan')


def make_runner(config: Config, batch: int, matmul_size: int, num_classes: int = 1000):
  if config.kind == 'jax':
    return JaxTrainRunner(batch, config.model, num_classes, donate=config.donate)
  if config.kind == 'torch':
    return TorchTrainRunner(batch, config.mode, num_classes)
  if config.kind in ('matmul_jax', 'matmul_torch'):
    return MatmulRunner(config.kind.split('_')[1], matmul_size)
  raise ValueError(f'Unknown configuration kind {config.kind!r}.')


class RssSampler:
  """The highest RSS seen by a background thread sampling every ``interval_s`` while active.

  ``ru_maxrss`` is the process's high-water mark since it started (imports, setup, compilation
  included); this one covers only the timed steps: the memory a step itself needs.
  """

  def __init__(self, interval_s: float = 0.005):
    import threading  # pylint: disable=g-import-not-at-top
    self.interval_s, self.peak_mib = interval_s, 0.0
    self._active = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    import psutil  # pylint: disable=g-import-not-at-top
    process = psutil.Process()
    while True:
      self._active.wait()
      self.peak_mib = max(self.peak_mib, process.memory_info().rss / 2**20)
      time.sleep(self.interval_s)

  def __enter__(self):
    self._active.set()
    return self

  def __exit__(self, *exc):
    self._active.clear()


class LocalWorker:
  """A runner driven in this process, with the same protocol as :class:`SubprocessWorker`."""

  def __init__(self, runner, warmup: int, sample_rss: bool = False):
    self.runner, self.warmup = runner, warmup
    self.sampler = RssSampler() if sample_rss else None

  def start(self) -> dict:
    info = self.runner.setup()
    info['peak_rss_after_setup_mib'] = _peak_rss_mib()
    return {**info, **_first_and_warmup(self.runner, self.warmup),
            'peak_rss_after_warmup_mib': _peak_rss_mib()}

  def step(self) -> dict:
    before = os.times()
    if self.sampler is not None:
      with self.sampler:
        t, loss = self.runner.step()
    else:
      t, loss = self.runner.step()
    after = os.times()
    # CPU seconds of this process over the step (all threads): less sensitive than wall time to
    # other processes' load, but it includes thread pools' spin-waiting.
    cpu = (after.user - before.user) + (after.system - before.system)
    return {'t': t, 'loss': loss, 'cpu_s': cpu}

  def finish(self) -> dict:
    out = {'peak_rss_mib': _peak_rss_mib(), 'rss_end_mib': _rss_mib()}
    if self.sampler is not None:
      out['step_peak_rss_mib'] = self.sampler.peak_mib
    return out


def _first_and_warmup(runner, warmup: int) -> dict:
  """The first step (includes lazy compilation: torch.compile, allocator growth) and warm-ups."""
  first, loss = runner.step()
  warm = [runner.step()[0] for _ in range(warmup)]
  return {'first_step_s': first, 'first_loss': loss, 'warmup_s': warm}


# --------------------------------------------------------------------------------------------
# Worker subprocesses
# --------------------------------------------------------------------------------------------
def worker_env(config: Config, platform_name: str = 'cpu') -> dict:
  """The environment of a worker: one JAX device, the configuration's XLA flags."""
  env = dict(os.environ)
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '', env.get('XLA_FLAGS', ''))
  if platform_name == 'cpu':
    flags += ' --xla_force_host_platform_device_count=1'
  env['XLA_FLAGS'] = ' '.join((flags + ' ' + config.xla_flags).split())
  env['JAX_PLATFORMS'] = platform_name
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  env.update(config.env)
  return env


class SubprocessWorker:
  """A configuration in its own Python process, driven over a pipe (one JSON line per reply)."""

  def __init__(self, config: Config, batch: int, warmup: int, matmul_size: int,
               num_classes: int = 1000, timeout_s: float = 1800.0):
    self.config, self.timeout_s = config, timeout_s
    self.log = tempfile.NamedTemporaryFile('w+', prefix=f'bench_{config.name}_', suffix='.log',
                                           delete=False)
    spec = {'config': config.to_json(), 'batch': batch, 'warmup': warmup,
            'matmul_size': matmul_size, 'num_classes': num_classes}
    self.proc = subprocess.Popen(
        [sys.executable, SCRIPT, '--worker', json.dumps(spec)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self.log, env=worker_env(config), bufsize=0)
    self._buffer = b''

  def _request(self, command: str) -> dict:
    self.proc.stdin.write((command + '\n').encode())
    self.proc.stdin.flush()
    fd = self.proc.stdout.fileno()
    deadline = time.monotonic() + self.timeout_s
    while b'\n' not in self._buffer:
      left = deadline - time.monotonic()
      ready, _, _ = select.select([fd], [], [], max(left, 0))
      if not ready:
        self.kill()
        raise RuntimeError(f'{self.config.name}: no reply to {command!r} in {self.timeout_s} s.'
                           f'\n{self._log_tail()}')
      chunk = os.read(fd, 65536)
      if not chunk:
        self.proc.wait()
        raise RuntimeError(f'{self.config.name}: the worker died (exit {self.proc.returncode}) '
                           f'during {command!r}.\n{self._log_tail()}')
      self._buffer += chunk
    line, self._buffer = self._buffer.split(b'\n', 1)
    reply = json.loads(line)
    if 'error' in reply:
      self.kill()
      raise RuntimeError(f'{self.config.name}: {reply["error"]}')
    return reply

  def _log_tail(self, chars: int = 4000) -> str:
    self.log.flush()
    with open(self.log.name, encoding='utf-8', errors='replace') as f:
      return f.read()[-chars:]

  def start(self) -> dict:
    return self._request('start')

  def step(self) -> dict:
    return self._request('step')

  def finish(self) -> dict:
    reply = self._request('finish')
    self.proc.stdin.close()
    self.proc.wait(timeout=120)
    os.unlink(self.log.name)
    return reply

  def kill(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


def worker_main(spec_json: str) -> None:
  """The worker's side of the pipe protocol: 'start', then 'step' any number of times, 'finish'."""
  # Replies go to the original stdout; anything libraries print goes to stderr (the log).
  proto = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)
  sys.stdout = sys.stderr

  def reply(obj):
    proto.write(json.dumps(obj) + '\n')
    proto.flush()

  spec = json.loads(spec_json)
  config = Config(**spec['config'])
  worker = None
  try:
    for line in sys.stdin:
      command = line.strip()
      if command == 'start':
        # The framework's own import is not the configuration's memory: measure after it.
        __import__('torch' if 'torch' in config.kind else 'jax')
        baseline = _rss_mib()
        runner = make_runner(config, spec['batch'], spec['matmul_size'], spec['num_classes'])
        worker = LocalWorker(runner, spec['warmup'], sample_rss=True)
        info = worker.start()
        reply({**info, 'rss_start_mib': baseline, 'rss_ready_mib': _rss_mib(),
               'pid': os.getpid()})
      elif command == 'step':
        reply(worker.step())
      elif command == 'finish':
        reply(worker.finish())
        return
      else:
        reply({'error': f'unknown command {command!r}'})
        return
  except Exception:  # pylint: disable=broad-except
    reply({'error': traceback.format_exc()})
    sys.exit(1)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def run_rounds(workers: dict[str, Any], steps: int, gap_s: float,
               log: Callable[[str], None] = print) -> dict[str, list[dict]]:
  """``steps`` rounds; each runs one step of every worker, order rotated by one each round."""
  names = list(workers)
  out = {name: [] for name in names}
  for r in range(steps):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      time.sleep(gap_s)
      out[name].append(workers[name].step())
    log(f'  round {r + 1}/{steps}: ' + ', '.join(
        f'{n} {out[n][-1]["t"] * 1e3:.0f} ms' for n in names))
  return out


def summarize(config: Config, batch: int, info: dict, steps: list[dict], end: dict,
              flops: dict) -> dict:
  """One result row: raw times and the derived rates."""
  times = [s['t'] for s in steps]
  median = statistics.median(times)
  cpu = [s.get('cpu_s', float('nan')) for s in steps]
  row = {'config': config.name, 'label': config.label, 'kind': config.kind, 'mode': config.mode,
         'model_options': config.model, 'xla_flags_extra': config.xla_flags, 'batch': batch,
         'step_times_s': times, 'median_s': median, 'min_s': min(times), 'max_s': max(times),
         'step_cpu_s': cpu, 'median_cpu_s': statistics.median(cpu),
         'losses': [s['loss'] for s in steps], **{k: v for k, v in info.items()}, **end}
  if config.kind.startswith('matmul'):
    row['gflops'] = info['flops'] / median / 1e9
    return row
  if config.kind == 'torch' and config.mode == 'compile':
    # torch.compile compiles during the first call.
    row['compile_s'] = info['first_step_s'] - median
  row['images_per_s'] = batch / median
  row['analytic_flops'] = flops['step']
  row['gflops'] = flops['step'] / median / 1e9
  if row.get('xla_flops'):
    row['xla_flops_per_image'] = row['xla_flops'] / batch
  return row


def machine_info() -> dict:
  info = {'platform': platform.platform(), 'processor': platform.processor(),
          'python': platform.python_version(), 'cpu_count': os.cpu_count()}
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      names = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
    info['cpu'] = names[0] if names else ''
  except OSError:
    info['cpu'] = ''
  try:
    import psutil  # pylint: disable=g-import-not-at-top
    info['memory_gib'] = round(psutil.virtual_memory().total / 2**30, 1)
  except ImportError:
    pass
  info['loadavg_start'] = os.getloadavg()
  for module in ('jax', 'jaxlib', 'flax', 'torch'):
    try:
      info[f'{module}_version'] = __import__(module).__version__
    except ImportError:
      info[f'{module}_version'] = None
  return info


def run_benchmark(configs: Sequence[Config], batch_sizes: Sequence[int], steps: int,
                  warmup: int, matmul_size: int, gap_s: float = 0.2,
                  log: Callable[[str], None] = print) -> dict:
  """Every configuration at every batch size; batch sizes one after another (memory)."""
  results, notes = [], []
  if not torch_available():
    dropped = [c.name for c in configs if c.kind in ('torch', 'matmul_torch')]
    if dropped:
      notes.append(f'torch is not installed (the `compare` extra): skipped {", ".join(dropped)}.')
      log('NOTE: ' + notes[-1])
    configs = [c for c in configs if c.kind not in ('torch', 'matmul_torch')]
  meta = machine_info()
  flops_by_batch = {}
  for batch in batch_sizes:
    flops = analytic_flops(batch)
    if any(c.kind == 'jax' for c in configs):
      log(f'batch {batch}: XLA\'s FLOP count of the step')
      flops['xla_step'] = xla_step_flops_subprocess(batch)
      flops['xla_step_per_image'] = flops['xla_step'] / batch
    flops_by_batch[str(batch)] = flops
    workers, infos = {}, {}
    try:
      for config in configs:
        log(f'batch {batch}: starting {config.name} ({config.label})')
        workers[config.name] = SubprocessWorker(config, batch, warmup, matmul_size)
        infos[config.name] = workers[config.name].start()
        log(f'  ready: compile {infos[config.name].get("compile_s")}, first step '
            f'{infos[config.name]["first_step_s"]:.2f} s')
      timed = run_rounds(workers, steps, gap_s, log)
      ends = {name: w.finish() for name, w in workers.items()}
    finally:
      for w in workers.values():
        w.kill()
    for config in configs:
      results.append(summarize(config, batch, infos[config.name], timed[config.name],
                               ends[config.name], flops))
    ceilings = [r['gflops'] for r in results
                if r['batch'] == batch and r['kind'].startswith('matmul')]
    for r in results:
      if r['batch'] == batch and ceilings:
        r['ceiling_gflops'] = max(ceilings)
        if not r['kind'].startswith('matmul'):
          r['fraction_of_ceiling'] = r['gflops'] / max(ceilings)
  meta['loadavg_end'] = os.getloadavg()
  return {
      'benchmark': 'alexnet_jax train step vs PyTorch twin',
      'date': datetime.datetime.now().isoformat(timespec='seconds'),
      'command': 'python ' + ' '.join(shlex.quote(a) for a in
                                      [os.path.relpath(SCRIPT, REPO)] + sys.argv[1:]),
      'machine': meta,
      'settings': {'batch_sizes': list(batch_sizes), 'timed_steps': steps, 'warmup_steps': warmup,
                   'matmul_size': matmul_size, 'gap_s': gap_s, 'dtype': 'float32',
                   'alternation': 'one worker process per configuration; round-robin, one step '
                                  'per configuration per round, order rotated each round'},
      'flops': flops_by_batch,
      'notes': notes,
      'results': results,
  }


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def _fmt(value, spec: str, empty: str = '-') -> str:
  if value is None or (isinstance(value, float) and value != value):
    return empty
  return format(value, spec)


def machine_line(meta: dict) -> str:
  load = meta.get('loadavg_start'), meta.get('loadavg_end')
  load_text = ''
  if all(load):
    load_text = (f'; load average (1 min) {load[0][0]:.1f} at start, {load[1][0]:.1f} at end '
                 f'on {meta.get("cpu_count")} cores')
  return (f'{meta.get("cpu") or meta.get("processor")}, {meta.get("cpu_count")} cores, '
          f'{meta.get("memory_gib", "?")} GiB; jax {meta.get("jax_version")}, '
          f'torch {meta.get("torch_version")}{load_text}')


def markdown_report(data: dict) -> str:
  """The tables: images/s per configuration and batch, then every measured number."""
  results = data['results']
  batches = data['settings']['batch_sizes']
  s = data['settings']
  lines = [
      f'Training step (forward, softmax cross-entropy, backward, SGD with momentum and weight '
      f'decay), {s["dtype"]}, device-resident synthetic batch; median of {s["timed_steps"]} '
      f'timed steps after {s["warmup_steps"]} warm-up steps (and a first, compiling step), '
      f'configurations alternated step by step in one run.',
      '',
      f'Command: `{data["command"]}` ({data["date"]})',
      '',
      f'Machine: {machine_line(data["machine"])}.',
      '']
  rows = [r for r in results if not r['kind'].startswith('matmul')]
  labels = list(dict.fromkeys(r['label'] for r in rows))
  by = {(r['label'], r['batch']): r for r in rows}
  lines += ['| images/s | ' + ' | '.join(f'batch {b}' for b in batches) + ' |',
            '|---|' + '---|' * len(batches)]
  for label in labels:
    cells = [_fmt(by[(label, b)]['images_per_s'], '.1f') if (label, b) in by else '-'
             for b in batches]
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  lines.append('')
  flops = data['flops'][str(batches[0])]
  xla = (f'; XLA\'s cost analysis of the XLA-differentiated step: '
         f'{flops["xla_step_per_image"] / 1e9:.3f} G' if 'xla_step_per_image' in flops else '')
  lines.append(f'FLOPs per image (analytic: forward {flops["forward_per_image"] / 1e9:.3f} G, '
               f'step {flops["step_per_image"] / 1e9:.3f} G{xla}). GFLOP/s below count the '
               f'analytic step FLOPs; "XLA GFLOP/image" is the cost analysis of each compiled '
               f'step as configured (a lax.scan body counted once).')
  ceilings = [r for r in results if r['kind'].startswith('matmul')]
  if ceilings:
    lines.append('Matmul ceiling, fp32 ' + ', '.join(
        f'{r["label"].split(",")[1].split("(")[0].strip()} n={r["n"]} batch-{r["batch"]} '
        f'round: {r["gflops"]:.0f} GFLOP/s' for r in ceilings) + '.')
  lines += ['',
            '| configuration | batch | images/s | ms/step median (min-max) | GFLOP/s | '
            '% of ceiling | CPU s/step | XLA GFLOP/image | compile s | first step s | '
            'peak RSS MiB: process / timed steps / after import |',
            '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f'| {r["label"]} | {r["batch"]} | {r["images_per_s"]:.1f} | '
        f'{r["median_s"] * 1e3:.0f} ({r["min_s"] * 1e3:.0f}-{r["max_s"] * 1e3:.0f}) | '
        f'{r["gflops"]:.1f} | {_fmt(100 * r.get("fraction_of_ceiling", float("nan")), ".1f")} | '
        f'{r["median_cpu_s"]:.2f} | '
        f'{_fmt(r.get("xla_flops_per_image", float("nan")) / 1e9, ".3f")} | '
        f'{_fmt(r.get("compile_s"), ".1f")} | {r["first_step_s"]:.1f} | '
        f'{r["peak_rss_mib"]:.0f} / {_fmt(r.get("step_peak_rss_mib"), ".0f")} / '
        f'{r["rss_start_mib"]:.0f} |')
  lines += ['', 'Peak RSS: the process\'s high-water mark (ru_maxrss: imports, setup, compilation '
            'and steps; torch.compile compiles in helper processes, not counted), the highest '
            'RSS sampled every 5 ms during the timed steps, and the RSS right after importing '
            'the framework. CPU s/step: CPU time of the worker over a step, all threads (less '
            'sensitive to other load than wall time; includes spin-waiting).']
  for note in data.get('notes', []):
    lines += ['', f'Note: {note}']
  return '\n'.join(lines) + '\n'


def update_readme(path: str, table: str) -> None:
  """Replaces the text between the benchmark markers of ``path`` with ``table``."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  if README_START not in text or README_END not in text:
    raise SystemExit(f'{path} has no {README_START} ... {README_END} section to update.')
  head, rest = text.split(README_START, 1)
  _, tail = rest.split(README_END, 1)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(head + README_START + '\n' + table + README_END + tail)


def write_outputs(data: dict, table: str, json_path: str | None, md_path: str | None) -> None:
  if json_path:
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, 'w', encoding='utf-8') as f:
      json.dump(data, f, indent=1)
  if md_path:
    os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
    with open(md_path, 'w', encoding='utf-8') as f:
      f.write(table)


# --------------------------------------------------------------------------------------------
# Per-layer profile (--profile-layers)
# --------------------------------------------------------------------------------------------
# (block, input shape without batch, what it is); conv blocks include their ReLU and bias.
PROFILE_BLOCKS = (
    ('conv1', (227, 227, 3)), ('norm1', (55, 55, 96)), ('pool1', (55, 55, 96)),
    ('conv2', (27, 27, 96)), ('norm2', (27, 27, 256)), ('pool2', (27, 27, 256)),
    ('conv3', (13, 13, 256)), ('conv4', (13, 13, 384)), ('conv5', (13, 13, 384)),
    ('pool5', (13, 13, 256)), ('fc6', (9216,)), ('fc7', (4096,)), ('fc8+loss', (4096,)),
    ('sgd', None),
)


def _conv_args(block: str) -> tuple[int, int, int, int, int]:
  """(features, kernel size, stride, padding, groups) of a conv block: the model's table."""
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  return {name: tuple(rest) for name, *rest in model_lib.CONV_LAYERS}[block]


# Alternatives timed against each other, block by block: (block, variant name, options).
PROFILE_VARIANTS = {
    'conv_impl': [(b, impl, {'conv_impl': impl}) for b in ('conv2', 'conv4', 'conv5')
                  for impl in ('split', 'feature_group_count')],
    'conv_weight_grad': [(b, wg, {'conv_weight_grad': wg})
                         for b in ('conv2', 'conv3', 'conv4', 'conv5')
                         for wg in ('xla', 'matmul')],
    'conv1': [('conv1', f'{impl}, weight grad {wg}', {'conv1_impl': impl, 'conv_weight_grad': wg})
              for impl in ('direct', 'space_to_depth') for wg in ('xla', 'matmul')],
    'lrn_impl': [(b, impl, {'lrn_impl': impl}) for b in ('norm1', 'norm2')
                 for impl in ('reduce_window', 'matmul', 'shifted_slices', 'cumsum')],
    'lrn_grad': [(b, grad, {'lrn_grad': grad}) for b in ('norm1', 'norm2')
                 for grad in ('autodiff', 'closed_form')],
    'pool_impl': [(b, impl, {'pool_impl': impl}) for b in ('pool1', 'pool2', 'pool5')
                  for impl in ('strided_argmax', 'strided_slices', 'reduce_window')],
}


def _jax_block(block: str, batch: int, options: dict):
  """(forward fn, forward+backward fn, args) of one block of the JAX model, jitted."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax import optim  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  keys = iter(jax.random.split(jax.random.key(0), 8))
  shape = dict(PROFILE_BLOCKS)[block]
  # Unset options take the model's own defaults ('auto' resolved for this backend).
  options = {**model_lib.AlexNet().impls(), **options}
  normal = lambda s, scale=1.0: jax.random.normal(next(keys), s, jnp.float32) * scale
  if block == 'sgd':
    model = model_lib.AlexNet()
    tx = optim.sgd_with_injected_lr(0.01)
    state = train.create_train_state(jax.random.key(0), model, tx)
    grads = jax.tree_util.tree_map(lambda p: p * 1e-3, state.params)

    def update(params, opt_state, grads):
      updates, opt_state = tx.update(grads, opt_state, params)
      import optax  # pylint: disable=g-import-not-at-top
      return optax.apply_updates(params, updates), opt_state

    fn = jax.jit(update)
    return fn, fn, (state.params, state.opt_state, grads)
  x = normal((batch,) + shape, 10.0)
  if block.startswith('conv'):
    features, ksize, stride, pad, groups = _conv_args(block)
    kernel = normal((ksize, ksize, shape[-1] // groups, features), 0.01)
    bias = jnp.zeros((features,))
    impl = options['conv_impl']
    weight_grad = options['conv_weight_grad']
    space_to_depth = block == 'conv1' and options['conv1_impl'] == 'space_to_depth'
    narrow = options['narrow_conv_impl']

    def f(kernel, bias, x):
      if space_to_depth:
        y = model_lib.space_to_depth_conv(x, kernel, stride, weight_grad, narrow)
      else:
        y = model_lib.grouped_conv(x, kernel, (stride, stride), ((pad, pad),) * 2, groups, impl,
                                   weight_grad, narrow)
      return jax.nn.relu(y + bias)
    args = (kernel, bias, x)
    argnums = (0, 1) if block == 'conv1' else (0, 1, 2)
  elif block.startswith('norm'):
    impl = options['lrn_impl']
    grad = options['lrn_grad']
    f = lambda x: model_lib.local_response_norm(x, groups=2, impl=impl, grad=grad)
    args, argnums = (x,), (0,)
  elif block.startswith('pool'):
    impl = options['pool_impl']
    f = lambda x: model_lib.max_pool(x, impl=impl)
    args, argnums = (x,), (0,)
  else:
    features = {'fc6': 4096, 'fc7': 4096, 'fc8+loss': 1000}[block]
    kernel = normal((shape[0], features), 0.01)
    bias = jnp.zeros((features,))
    labels = jax.random.randint(next(keys), (batch,), 0, 1000)
    mask_key = next(keys)

    def f(kernel, bias, x):
      y = jnp.dot(x, kernel) + bias
      if block == 'fc8+loss':
        return jnp.mean(train.cross_entropy(y, labels))
      keep = jax.random.bernoulli(mask_key, 0.5, y.shape)
      return jnp.where(keep, jax.nn.relu(y) / 0.5, 0.0)
    args, argnums = (kernel, bias, x), (0, 1, 2)
  out = jax.eval_shape(f, *args)
  cotangent = jax.random.normal(next(keys), out.shape, out.dtype)

  def fwd_bwd(*a):
    _, vjp = jax.vjp(lambda *sel: f(*[sel[argnums.index(i)] if i in argnums else a[i]
                                      for i in range(len(a))]),
                     *[a[i] for i in argnums])
    return vjp(cotangent)
  return jax.jit(f), jax.jit(fwd_bwd), args


def _torch_block(block: str, batch: int):
  """(forward fn, forward+backward fn) of one block of the PyTorch twin, eager NCHW."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from alexnet_jax import torch_twin  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  shape = dict(PROFILE_BLOCKS)[block]
  if block == 'sgd':
    model = torch_twin.AlexNetTwin()
    opt = torch_twin.make_sgd(model)
    for p in model.parameters():
      p.grad = torch.randn_like(p) * 1e-3
    return opt.step, opt.step
  if len(shape) == 3:
    shape = (shape[2], shape[0], shape[1])
  x = torch.randn((batch,) + shape) * 10.0
  params = []
  if block.startswith('conv'):
    features, ksize, stride, pad, groups = _conv_args(block)
    layer = torch.nn.Conv2d(shape[0], features, ksize, stride, pad, groups=groups)
    f = lambda x: F.relu(layer(x))
    params = list(layer.parameters())
  elif block.startswith('norm'):
    f = torch_twin.GroupedLRN(groups=2)
  elif block.startswith('pool'):
    f = lambda x: F.max_pool2d(x, 3, 2)
  else:
    features = {'fc6': 4096, 'fc7': 4096, 'fc8+loss': 1000}[block]
    layer = torch.nn.Linear(shape[0], features)
    params = list(layer.parameters())
    labels = torch.randint(0, 1000, (batch,))
    if block == 'fc8+loss':
      f = lambda x: F.cross_entropy(layer(x), labels)
    else:
      f = lambda x: F.dropout(F.relu(layer(x)), 0.5, training=True)
  x.requires_grad_(block != 'conv1')

  def forward():
    with torch.no_grad():
      f(x)

  def fwd_bwd():
    for p in params:
      p.grad = None
    x.grad = None
    y = f(x)
    y.backward(torch.ones_like(y))
  return forward, fwd_bwd


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, gap_s: float = 0.05,
                        warmup: int = 1) -> dict[str, float]:
  """Median seconds of each zero-argument call, calls alternated round-robin."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  names = list(fns)
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      time.sleep(gap_s)
      start = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def profile_layers(batch: int, options: dict, repeats: int, with_torch: bool,
                   variant_groups: Sequence[str] | None = None) -> dict:
  """Per-block forward and forward+backward medians (ms) of JAX (and PyTorch eager), and the
  variant groups of :data:`PROFILE_VARIANTS`, all calls of a table alternated."""
  import jax  # pylint: disable=g-import-not-at-top

  def jax_call(fn, args):
    return lambda: jax.block_until_ready(fn(*args))

  fns = {}
  for block, _ in PROFILE_BLOCKS:
    fwd, fwd_bwd, args = _jax_block(block, batch, options)
    fns[('jax', block, 'fwd')] = jax_call(fwd, args)
    if block != 'sgd':
      fns[('jax', block, 'fwd+bwd')] = jax_call(fwd_bwd, args)
    if with_torch:
      tf, tfb = _torch_block(block, batch)
      fns[('torch', block, 'fwd')] = tf
      if block != 'sgd':
        fns[('torch', block, 'fwd+bwd')] = tfb
  medians = interleaved_medians(fns, repeats)
  layers = [{'block': block, **{f'{fw}_{what}_ms': medians[(fw, block, what)] * 1e3
                                for fw in (('jax', 'torch') if with_torch else ('jax',))
                                for what in ('fwd', 'fwd+bwd') if (fw, block, what) in medians}}
            for block, _ in PROFILE_BLOCKS]
  variants = {}
  for group in (variant_groups if variant_groups is not None else PROFILE_VARIANTS):
    vfns = {}
    for block, name, opts in PROFILE_VARIANTS[group]:
      _, fwd_bwd, args = _jax_block(block, batch, {**options, **opts})
      vfns[(block, name)] = jax_call(fwd_bwd, args)
    vmed = interleaved_medians(vfns, repeats)
    variants[group] = [{'block': b, 'variant': n, 'fwd+bwd_ms': t * 1e3}
                       for (b, n), t in vmed.items()]
  return {'batch': batch, 'options': options, 'repeats': repeats, 'layers': layers,
          'variants': variants}


def profile_markdown(prof: dict) -> str:
  layers = prof['layers']
  cols = [k for k in layers[0] if k.endswith('_ms')]
  lines = [f'Per-block median ms, batch {prof["batch"]}, fp32, {prof["repeats"]} alternated '
           f'calls; JAX options {prof["options"] or "defaults"}.', '',
           '| block | ' + ' | '.join(c[:-3].replace('_', ' ') for c in cols) + ' |',
           '|---|' + '---|' * len(cols)]
  totals = dict.fromkeys(cols, 0.0)
  for row in layers:
    cells = []
    for c in cols:
      value = row.get(c)
      cells.append(_fmt(value, '.1f'))
      if value is not None and (c.endswith('fwd+bwd_ms') or row['block'] == 'sgd'):
        totals[c] += value
    lines.append(f'| {row["block"]} | ' + ' | '.join(cells) + ' |')
  lines.append('| sum fwd+bwd + sgd | ' + ' | '.join(
      _fmt(totals[c], '.1f') if c.endswith('fwd+bwd_ms') else '' for c in cols) + ' |')
  for group, rows in prof['variants'].items():
    lines += ['', f'Variants ({group}), forward+backward ms:', '',
              '| block | variant | ms |', '|---|---|---|']
    lines += [f'| {r["block"]} | {r["variant"]} | {r["fwd+bwd_ms"]:.1f} |' for r in rows]
  return '\n'.join(lines) + '\n'


# --------------------------------------------------------------------------------------------
# Per-op profile of the compiled step (--profile-ops)
# --------------------------------------------------------------------------------------------
_KERNEL_SHAPES = {
    'conv1': (11, 11, 3, 96), 'conv2': (5, 5, 48, 128), 'conv3': (3, 3, 256, 384),
    'conv4': (3, 3, 192, 192), 'conv5': (3, 3, 192, 128), 'fc6': (9216, 4096),
    'fc7': (4096, 4096), 'fc8': (4096, 1000)}


def _hlo_instructions(hlo_text: str) -> dict[str, dict]:
  """name -> {'shape', 'opcode', 'op_name', 'root'} for every instruction of an HLO module."""
  out, roots, computation = {}, {}, None
  for line in hlo_text.splitlines():
    if line and not line.startswith(' ') and line.rstrip().endswith('{'):
      words = line.split()
      computation = (words[1] if words[0] == 'ENTRY' else words[0]).lstrip('%')
      continue
    m = re.match(r'\s*(ROOT )?%(\S+) = (\S+?(?:\{[^}]*\})?) ([\w-]+)\(', line)
    if not m:
      continue
    op_name = re.search(r'op_name="([^"]+)"', line)
    calls = re.search(r'calls=%([\w.-]+)', line)
    out[m.group(2)] = {'shape': m.group(3), 'opcode': m.group(4),
                       'op_name': op_name.group(1) if op_name else '',
                       'calls': calls.group(1) if calls else None}
    if m.group(1):
      roots[computation] = m.group(2)
  for info in out.values():
    root = roots.get(info['calls']) if info['calls'] else None
    info['root'] = out[root] if root in out else None
  return out


def _classify(info: dict) -> tuple[str, str]:
  """(layer, phase) of one executed instruction, from its op_name metadata or its shape."""
  op_name = info['op_name'] or (info['root'] or {}).get('op_name', '')
  phase = 'backward' if 'transpose(' in op_name else 'forward'
  m = re.search(r'/(conv\d|fc\d)/', op_name)
  if m:
    return m.group(1), phase
  if '_norm_pool' in op_name or 'max_pool' in op_name:
    kind = 'lrn' if re.search(r'(reduce_window_sum|rsqrt|sqrt|integer_pow|_lrn|cumsum|dot)',
                              op_name) else 'lrn/pool'
    return kind, phase
  if 'Dropout' in op_name or '/relu' in op_name or '/max' in op_name:
    return 'relu/dropout/pool', phase
  bracket = re.search(r'\[([\d,]*)\]', info['shape'])
  dims = tuple(int(d) for d in bracket.group(1).split(',') if d) if bracket else ()
  for layer, kshape in _KERNEL_SHAPES.items():
    if dims and sorted(dims) == sorted(kshape):
      # A kernel-shaped result: its weight gradient, or the optimizer update of the kernel.
      return layer, ('weight grad' if info['opcode'] == 'fusion' and info['root'] and
                     info['root']['opcode'] in ('convolution', 'dot') else 'optimizer')
  if op_name in ('', 'jit(<lambda>)/add', 'jit(<lambda>)/mul') or op_name.endswith('/add'):
    return 'optimizer/other', ''
  return 'other', phase


def profile_ops(batch: int, model_options: dict, steps: int = 3, top: int = 25) -> dict:
  """Runs the compiled train step under the JAX profiler and sums the time of each HLO op.

  Needs ``--xla_cpu_enable_xprof_traceme=true`` in XLA_FLAGS before JAX starts (set by
  :func:`profile_main`). Ops of a thunk executor may overlap: the op sum can exceed the step.
  """
  import glob  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  import collections  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  runner = JaxTrainRunner(batch, model_options)
  runner.setup()
  for _ in range(2):
    runner.step()
  instructions = _hlo_instructions(runner.compiled.as_text())
  with tempfile.TemporaryDirectory() as tmp:
    walls = []
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        walls.append(runner.step()[0])
    traces = glob.glob(os.path.join(tmp, '**', '*perfetto_trace.json.gz'), recursive=True)
    with gzip.open(traces[0]) as f:
      events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  per_op = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e.get('name') in instructions:
      per_op[e['name']] += e.get('dur', 0) / 1e3 / steps
  groups = collections.Counter()
  ops = []
  for name, ms in per_op.most_common():
    info = instructions[name]
    layer, phase = _classify(info)
    groups[f'{layer} {phase}'.strip()] += ms
    ops.append({'op': name, 'ms': ms, 'shape': info['shape'], 'layer': layer, 'phase': phase,
                'op_name': info['op_name'] or (info['root'] or {}).get('op_name', ''),
                'root': (info['root'] or {}).get('opcode', info['opcode'])})
  return {'batch': batch, 'options': model_options, 'step_ms': statistics.median(walls) * 1e3,
          'op_sum_ms': sum(per_op.values()), 'groups': dict(groups.most_common()),
          'top_ops': ops[:top], 'ops': ops}


def profile_ops_markdown(prof: dict) -> str:
  lines = [f'Per-op profile of the compiled step, batch {prof["batch"]}, options '
           f'{prof["options"] or "defaults"}: step {prof["step_ms"]:.0f} ms (median), sum of op '
           f'times {prof["op_sum_ms"]:.0f} ms.', '', '| layer / phase | ms | share |',
           '|---|---|---|']
  for group, ms in prof['groups'].items():
    lines.append(f'| {group} | {ms:.1f} | {100 * ms / prof["op_sum_ms"]:.1f}% |')
  lines += ['', '| op | root | shape | layer | phase | ms |', '|---|---|---|---|---|---|']
  for op in prof['top_ops']:
    lines.append(f'| {op["op"]} | {op["root"]} | {op["shape"].split("{")[0]} | {op["layer"]} | '
                 f'{op["phase"]} | {op["ms"]:.1f} |')
  return '\n'.join(lines) + '\n'


def profile_main(args):
  flags = worker_env(PRESETS['jax_default'])['XLA_FLAGS']  # with the project's XLA flags
  if args.profile_ops:
    flags += ' --xla_cpu_enable_xprof_traceme=true'
  os.environ['XLA_FLAGS'] = flags
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  if args.profile_ops:
    out = []
    for config in (parse_config(c) for c in args.configs):
      for batch in args.batch_sizes or [32]:
        prof = profile_ops(batch, config.model, args.steps)
        prof['config'] = config.name
        print(f'### {config.name}: {config.label}\n\n' + profile_ops_markdown(prof), flush=True)
        out.append(prof)
    if args.json and args.json != DEFAULT_JSON:
      write_outputs({'op_profiles': out, 'machine': machine_info()}, '', args.json, None)
    return out
  out = []
  jax_configs = [c for c in (parse_config(c) for c in args.configs) if c.kind == 'jax']
  for batch in args.batch_sizes or [32]:
    for i, config in enumerate(jax_configs):
      # PyTorch's blocks and the variant tables once per batch size (they do not depend on
      # the configuration's options beyond what each variant sets).
      prof = profile_layers(batch, config.model, args.steps, torch_available() and i == 0,
                            args.profile_variants if i == 0 else [])
      prof['config'] = config.name
      print(f'### {config.name}: {config.label}\n\n' + profile_markdown(prof), flush=True)
      out.append(prof)
  if args.json and args.json != DEFAULT_JSON:
    write_outputs({'profiles': out, 'machine': machine_info()}, '', args.json, None)
  return out


# --------------------------------------------------------------------------------------------
# One GPU (--gpu): bf16 compute, fp32 parameters, batch 128 to 1024, and the real input pipeline
# --------------------------------------------------------------------------------------------
# XLA:GPU's own implementations (cuDNN grouped convolutions, select-and-scatter pooling): the
# CPU-tuned model defaults work around XLA:CPU slow paths that a GPU does not have.
GPU_MODEL_OPTIONS = {'dtype': 'bfloat16', 'conv_impl': 'feature_group_count',
                     'pool_impl': 'reduce_window', 'conv_weight_grad': 'xla',
                     'conv1_impl': 'direct', 'lrn_grad': 'autodiff'}


def _embedded_batches(batch: int, data_dir: str | None, tiny: bool):
  """(num_classes, an endless iterator of host batches) from the project's input pipeline."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = input_pipeline.default_data_config()
  config.data_dir = data_dir
  if tiny:
    config.name = 'alexnet_jax_shapes/tiny'
  info = input_pipeline.get_dataset_info(config)  # Prepares the embedded dataset once.

  def forever():
    epoch = 0
    while True:
      yield from input_pipeline.train_batches(config, global_batch_size=batch, seed=0,
                                              epoch=epoch)
      epoch += 1
  return info.num_classes, forever()


def run_end_to_end(runner: JaxTrainRunner, steps: int, batches,
                   log: Callable[[str], None] = print) -> dict:
  """Images/s of the input pipeline alone, of the step alone, and of the two together.

  ``runner`` is set up (compiled) for the batches' size and class count; ``batches`` is an
  iterator of host batches ({'image', 'label'} numpy arrays). The step alone
  runs on one device-resident batch; end to end, each step takes the next host batch, copies
  it to the device and trains on it (the trainer's loop, with one device; the copy of batch
  i + 1 overlaps step i through JAX's asynchronous dispatch). The smallest rate bounds the job.
  """
  import jax  # pylint: disable=g-import-not-at-top
  batch, num_classes = runner.batch, runner.num_classes
  runner.step()
  compute = statistics.median(runner.step()[0] for _ in range(max(steps, 1)))
  next(batches)  # Starts the pipeline's threads.
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  pipeline = (time.perf_counter() - start) / max(steps, 1)
  state = runner.state
  start = time.perf_counter()
  metrics = None
  # The pipeline ships uint8 crops; the device makes the inputs (in the main job, inside the
  # step; here in its own jit, as the runner's step is compiled for float32 images).
  from alexnet_jax import device_augment  # pylint: disable=g-import-not-at-top
  to_inputs = jax.jit(device_augment.network_inputs)
  for _ in range(steps):
    host = jax.device_put(next(batches))
    device_batch = {'image': to_inputs(host), 'label': host['label']}
    state, metrics = runner.compiled(state, device_batch)
  jax.block_until_ready((state, metrics))
  end_to_end = (time.perf_counter() - start) / max(steps, 1)
  rates = {'input pipeline': batch / pipeline, 'train step': batch / compute}
  row = {'batch': batch, 'steps': steps, 'num_classes': num_classes,
         'pipeline_images_per_s': rates['input pipeline'],
         'step_images_per_s': rates['train step'],
         'end_to_end_images_per_s': batch / end_to_end,
         'bound_by': min(rates, key=rates.get),
         'final_loss': float(metrics['loss']) if metrics is not None else None}
  log(f'end to end, batch {batch}: pipeline {row["pipeline_images_per_s"]:.0f}, step '
      f'{row["step_images_per_s"]:.0f}, together {row["end_to_end_images_per_s"]:.0f} images/s')
  return row


def run_gpu(batch_sizes: Sequence[int], steps: int, warmup: int, matmul_size: int,
            model_options: dict, chain: int, e2e_steps: int, e2e_batch: int,
            batches_factory=None, log: Callable[[str], None] = print) -> dict:
  """The single-device bf16 benchmark in this process (JAX only); see :func:`gpu_main`."""
  import jax  # pylint: disable=g-import-not-at-top
  workers = {'matmul_bf16': LocalWorker(MatmulRunner('jax', matmul_size, 'bfloat16',
                                                     chain=chain), warmup)}
  for batch in batch_sizes:
    workers[f'train_b{batch}'] = LocalWorker(
        JaxTrainRunner(batch, model_options, chain=chain), warmup)
  infos = {}
  for name, worker in workers.items():
    log(f'starting {name}')
    infos[name] = worker.start()
  timed = run_rounds(workers, steps, gap_s=0.0, log=log)
  ceiling = infos['matmul_bf16']['flops'] / statistics.median(
      s['t'] for s in timed['matmul_bf16']) / 1e9
  results = [{'config': 'matmul_bf16', 'kind': 'matmul_jax', 'n': matmul_size,
              'step_times_s': [s['t'] for s in timed['matmul_bf16']], 'gflops': ceiling}]
  for batch in batch_sizes:
    name = f'train_b{batch}'
    times = [s['t'] for s in timed[name]]
    median = statistics.median(times)
    flops = analytic_flops(batch)
    results.append({
        'config': name, 'kind': 'jax', 'batch': batch, 'model_options': model_options,
        'step_times_s': times, 'median_s': median, 'images_per_s': batch / median,
        'gflops': flops['step'] / median / 1e9,
        'fraction_of_ceiling': flops['step'] / median / 1e9 / ceiling,
        'xla_flops_per_image': infos[name]['xla_flops'] / batch,
        'compile_s': infos[name]['compile_s'], 'first_step_s': infos[name]['first_step_s'],
        'losses': [s['loss'] for s in timed[name]]})
  e2e = None
  if e2e_steps > 0:
    num_classes, batches = batches_factory(e2e_batch)
    reuse = workers.get(f'train_b{e2e_batch}')
    if reuse is not None and reuse.runner.num_classes == num_classes:
      runner = reuse.runner  # Same compiled step: no second compilation.
    else:
      runner = JaxTrainRunner(e2e_batch, model_options, num_classes)
      runner.setup()
    e2e = run_end_to_end(runner, e2e_steps, batches, log)
  del workers
  device = jax.devices()[0]
  return {'benchmark': 'alexnet_jax train step, one device, bf16 compute / fp32 params',
          'date': datetime.datetime.now().isoformat(timespec='seconds'),
          'command': 'python ' + ' '.join(shlex.quote(a) for a in
                                          [os.path.relpath(SCRIPT, REPO)] + sys.argv[1:]),
          'machine': {**machine_info(), 'device': device.device_kind,
                      'backend': jax.default_backend()},
          'settings': {'batch_sizes': list(batch_sizes), 'timed_steps': steps,
                       'warmup_steps': warmup, 'chain': chain, 'matmul_size': matmul_size,
                       'model_options': model_options},
          'ceiling_gflops': ceiling, 'results': results, 'end_to_end': e2e}


def gpu_markdown(data: dict) -> str:
  s = data['settings']
  lines = [f'One {data["machine"]["device"]} ({data["machine"]["backend"]}), bf16 compute with '
           f'fp32 parameters, device-resident synthetic batch; median of {s["timed_steps"]} '
           f'samples of {s["chain"]} chained steps after {s["warmup_steps"]} warm-up samples.', '',
           f'Command: `{data["command"]}` ({data["date"]})', '',
           f'bf16 matmul ceiling (n={s["matmul_size"]}), measured in the same rounds: '
           f'{data["ceiling_gflops"] / 1e3:.1f} TFLOP/s.', '',
           '| batch | images/s | ms/step | TFLOP/s (analytic) | % of bf16 matmul | compile s |',
           '|---|---|---|---|---|---|']
  for r in data['results']:
    if r['kind'] != 'jax':
      continue
    lines.append(f'| {r["batch"]} | {r["images_per_s"]:.0f} | {r["median_s"] * 1e3:.2f} | '
                 f'{r["gflops"] / 1e3:.2f} | {100 * r["fraction_of_ceiling"]:.1f} | '
                 f'{r["compile_s"]:.1f} |')
  e2e = data.get('end_to_end')
  if e2e:
    lines += ['', f'End to end on the embedded dataset ({e2e["num_classes"]} classes), batch '
              f'{e2e["batch"]}, {e2e["steps"]} steps: input pipeline alone '
              f'{e2e["pipeline_images_per_s"]:.0f} images/s, train step alone '
              f'{e2e["step_images_per_s"]:.0f}, together {e2e["end_to_end_images_per_s"]:.0f}: '
              f'bounded by the {e2e["bound_by"]}.']
  return '\n'.join(lines) + '\n'


def gpu_main(args):
  """``--gpu``: needs a CUDA jaxlib and one NVIDIA GPU; ``--dry-run`` runs the same code on the
  CPU at toy sizes (for tests)."""
  dry = args.dry_run
  os.environ['JAX_PLATFORMS'] = 'cpu' if dry else 'cuda'
  if dry:
    os.environ['XLA_FLAGS'] = worker_env(Config('gpu', 'jax', 'gpu'))['XLA_FLAGS']
  batch_sizes = args.batch_sizes or ([2, 4] if dry else [128, 256, 512, 1024])
  e2e_batch = args.e2e_batch or (4 if dry else 256)
  e2e_steps = args.e2e_steps if args.e2e_steps is not None else (2 if dry else 30)
  options = dict(GPU_MODEL_OPTIONS)
  if args.gpu_model_options:
    options.update(json.loads(args.gpu_model_options))
  data = run_gpu(batch_sizes, args.steps, args.warmup, args.matmul_size or (128 if dry else 8192),
                 options, chain=1 if dry else 5, e2e_steps=e2e_steps, e2e_batch=e2e_batch,
                 batches_factory=lambda b: _embedded_batches(b, args.data_dir, tiny=dry),
                 log=lambda m: print(m, file=sys.stderr, flush=True))
  table = gpu_markdown(data)
  print(table)
  json_path = args.json if args.json != DEFAULT_JSON else DEFAULT_JSON.replace('.json',
                                                                                '_gpu.json')
  write_outputs(data, table, json_path, args.markdown)
  return data


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--configs', nargs='+', default=list(DEFAULT_CONFIGS),
                 help=f'presets {sorted(PRESETS)} or name={{json}} (default: %(default)s)')
  p.add_argument('--batch-sizes', nargs='+', type=int, default=None,
                 help='default 32 128 (CPU), 128 256 512 1024 (--gpu)')
  p.add_argument('--steps', type=int, default=7, help='timed steps per configuration')
  p.add_argument('--warmup', type=int, default=2, help='warm-up steps after the first step')
  p.add_argument('--matmul-size', type=int, default=None,
                 help='n of the n x n ceiling matmul (default 4096; 8192 with --gpu)')
  p.add_argument('--gap', type=float, default=0.2, help='seconds of pause before each step')
  p.add_argument('--json', default=DEFAULT_JSON, help='raw results (default: %(default)s)')
  p.add_argument('--markdown', default=None, help='also write the table here')
  p.add_argument('--readme', default=None,
                 help=f'update the {README_START} section of this file with the table')
  p.add_argument('--profile-layers', action='store_true',
                 help='time each layer block forward and forward+backward instead')
  p.add_argument('--profile-ops', action='store_true',
                 help='per-op profile of the compiled JAX step of each of --configs (JAX only)')
  p.add_argument('--profile-variants', nargs='*', default=None,
                 help='with --profile-layers: the variant groups to time (default: all)')
  p.add_argument('--gpu', action='store_true', help='the single-GPU benchmark (bf16, JAX)')
  p.add_argument('--dry-run', action='store_true',
                 help='with --gpu: tiny sizes on the CPU, to check the logic')
  p.add_argument('--e2e-steps', type=int, default=None,
                 help='with --gpu: steps fed by the real input pipeline (0: skip)')
  p.add_argument('--e2e-batch', type=int, default=None, help='with --gpu: its batch size')
  p.add_argument('--gpu-model-options', default=None,
                 help=f'with --gpu: JSON AlexNet options over {GPU_MODEL_OPTIONS}')
  p.add_argument('--data-dir', default=None, help='with --gpu: TFDS data_dir for the embedded set')
  p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  p.add_argument('--xla-flops', type=int, default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None) -> dict | None:
  args = parse_args(argv)
  if args.worker is not None:
    worker_main(args.worker)
    return None
  if args.xla_flops is not None:
    print(xla_step_flops(args.xla_flops))
    return None
  if args.gpu:
    return gpu_main(args)
  if args.profile_layers or args.profile_ops:
    return profile_main(args)
  configs = [parse_config(c) for c in args.configs]
  batch_sizes = args.batch_sizes or [32, 128]
  data = run_benchmark(configs, batch_sizes, args.steps, args.warmup,
                       args.matmul_size or 4096, args.gap,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
  table = markdown_report(data)
  print(table)
  write_outputs(data, table, args.json, args.markdown)
  if args.readme:
    update_readme(args.readme, table)
  return data


if __name__ == '__main__':
  main()
