"""Workers: a runner driven in this process (:class:`LocalWorker`) or in its own Python process
over a pipe (:class:`SubprocessWorker`, one JSON line per reply), with the same protocol:
``start()`` (setup, first step, warm-up), ``step()`` any number of times, ``finish()``.

A configuration in its own process has its own peak RSS (``ru_maxrss`` of a process that builds,
compiles and runs only that configuration) and its own thread pools.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import subprocess
import sys
import tempfile
import time
import traceback

from experiments.bench.configs import Config
from experiments.bench import runners

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The entry point the worker processes run (``--worker SPEC``).
SCRIPT = os.path.join(REPO, 'experiments', 'benchmark.py')


def rss_mib() -> float:
  import psutil  # pylint: disable=g-import-not-at-top
  return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


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


def first_and_warmup(runner, warmup: int) -> dict:
  """The first step (includes lazy compilation: torch.compile, allocator growth) and warm-ups."""
  first, loss = runner.step()
  warm = [runner.step()[0] for _ in range(warmup)]
  return {'first_step_s': first, 'first_loss': loss, 'warmup_s': warm}


class LocalWorker:
  """A runner driven in this process, with the same protocol as :class:`SubprocessWorker`."""

  def __init__(self, runner, warmup: int, sample_rss: bool = False):
    self.runner, self.warmup = runner, warmup
    self.sampler = RssSampler() if sample_rss else None

  def start(self) -> dict:
    info = self.runner.setup()
    info['peak_rss_after_setup_mib'] = peak_rss_mib()
    return {**info, **first_and_warmup(self.runner, self.warmup),
            'peak_rss_after_warmup_mib': peak_rss_mib()}

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
    out = {'peak_rss_mib': peak_rss_mib(), 'rss_end_mib': rss_mib()}
    if self.sampler is not None:
      out['step_peak_rss_mib'] = self.sampler.peak_mib
    return out


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
  """A configuration in its own Python process, driven over a pipe (one JSON line per reply).

  ``extra`` holds whatever else the configuration's runner reads (the inference mode's weight
  files); the worker process builds the runner from the whole spec.
  """

  def __init__(self, config: Config, batch: int, warmup: int, matmul_size: int,
               num_classes: int = 1000, timeout_s: float = 1800.0, extra: dict | None = None):
    self.config, self.timeout_s = config, timeout_s
    self.log = tempfile.NamedTemporaryFile('w+', prefix=f'bench_{config.name}_', suffix='.log',
                                           delete=False)
    spec = {**(extra or {}), 'config': config.to_json(), 'batch': batch, 'warmup': warmup,
            'matmul_size': matmul_size, 'num_classes': num_classes}
    self.proc = subprocess.Popen(
        [sys.executable, SCRIPT, '--worker', json.dumps(spec)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self.log, env=worker_env(config), bufsize=0)
    self._buffer = b''

  def _read_line(self, command: str) -> bytes:
    fd = self.proc.stdout.fileno()
    deadline = time.monotonic() + self.timeout_s
    while b'\n' not in self._buffer:
      ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
      if not ready:
        tail = self._log_tail()  # before kill(), which removes the log
        self.kill()
        raise RuntimeError(f'{self.config.name}: no reply to {command!r} in {self.timeout_s} s.'
                           f'\n{tail}')
      chunk = os.read(fd, 65536)
      if not chunk:
        self.proc.wait()
        raise RuntimeError(f'{self.config.name}: the worker died (exit {self.proc.returncode}) '
                           f'during {command!r}.\n{self._log_tail()}')
      self._buffer += chunk
    line, self._buffer = self._buffer.split(b'\n', 1)
    return line

  def _request(self, command: str) -> dict:
    self.proc.stdin.write((command + '\n').encode())
    self.proc.stdin.flush()
    reply = json.loads(self._read_line(command))
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
    self._remove_log()
    return reply

  def kill(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self._remove_log()

  def _remove_log(self) -> None:
    """The worker's stderr file is for error messages only: it goes with the worker (a killed
    or failed worker's too, which used to stay in the temp folder)."""
    if not self.log.closed:
      self.log.close()
      os.unlink(self.log.name)


def _framework_module(kind: str) -> str:
  """The library a configuration's runner imports first (its import is not its memory)."""
  if kind == 'infer_onnxruntime':
    return 'onnxruntime'
  return 'torch' if 'torch' in kind else 'jax'


def _start(spec: dict, config: Config) -> tuple[LocalWorker, dict]:
  # The framework's own import is not the configuration's memory: measure after it.
  __import__(_framework_module(config.kind))
  baseline = rss_mib()
  worker = LocalWorker(runners.make_runner(config, spec), spec['warmup'], sample_rss=True)
  info = worker.start()
  return worker, {**info, 'rss_start_mib': baseline, 'rss_ready_mib': rss_mib(),
                  'pid': os.getpid()}


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
        worker, info = _start(spec, config)
        reply(info)
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
