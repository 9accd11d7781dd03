"""Test setup: 4 fake CPU devices (so 1-, 2- and 2x2-device meshes can be tested), a quiet TF, and
the repository root on sys.path (for experiments/bench).

This runs before any test module imports JAX; XLA reads the flag when its CPU backend starts.
"""
import ctypes
import gc
import os
import platform
import sys

# The experiments' code (experiments/bench: the benchmark and the PyTorch twin) is not part of
# the installed package: the tests import it from the repository root.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

from alexnet_jax import xla_flags  # noqa: E402  (imports neither JAX nor TensorFlow)

# XLA:CPU's elemental emitters instead of its newer fusion emitters, for the suite only: the
# same programs compile with less CPU (a 67-px train step 5.0 -> 3.2 s, a 227-px first step
# 10.7 -> 8.7 s; XLA's compile time summed over the suite 400 -> 301 s, about a quarter of its
# test time before), run as fast, and give the same numbers to the bit (checked in a fresh
# process by tests/test_suite_setup.py). A user's own value of a flag wins.
SUITE_XLA_FLAGS = ('--xla_cpu_use_fusion_emitters=false',)
os.environ['XLA_FLAGS'] = xla_flags.with_flags(
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4',
    SUITE_XLA_FLAGS)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# glibc's allocator for the suite: XLA:CPU gets its large temporaries from malloc, which by
# default maps and unmaps each of them on every call; in this suite that made a third of the CPU
# time system time (page faults). One arena, no mmap'd chunks, trimming only past 2 GiB free:
# tests/test_layout.py on 2 cores, wall 66 -> 49 s, system time 33 -> 7.5 s, user time 57 -> 61
# s, peak RSS 7.4 -> 8.3 GB. (The main job does not set it: its steps were not reliably faster,
# experiments/PERF.md attempt 15.) The variable reaches the processes started after this line
# (pytest-xdist's workers, the main-job subprocesses); this process gets it from mallopt. A
# user's own setting wins.
MALLOC_SETTINGS = {'arena_max': (-8, 1), 'mmap_max': (-4, 0), 'trim_threshold': (-1, 2**31 - 1)}


def _tune_malloc() -> None:
  os.environ['GLIBC_TUNABLES'] = ':'.join(
      f'glibc.malloc.{name}={value}' for name, (_, value) in MALLOC_SETTINGS.items())
  if platform.libc_ver()[0] == 'glibc':
    libc = ctypes.CDLL(None)
    for param, value in MALLOC_SETTINGS.values():  # parameter numbers from glibc's malloc.h
      libc.mallopt(ctypes.c_int(param), ctypes.c_int(value))


if not any(v in os.environ for v in ('GLIBC_TUNABLES', 'MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_',
                                     'MALLOC_TRIM_THRESHOLD_')):
  _tune_malloc()

import jax  # noqa: E402  (after the flags above)

jax.config.update('jax_enable_x64', False)


def pytest_report_header(config):
  return f'jax {jax.__version__}, devices: {jax.devices()}'


def pytest_collection_finish(session):
  """Freezes what exists once the tests are collected: JAX, TensorFlow, Orbax and the test
  modules, alive to the end. Python's full garbage collections scan every object they track;
  these were most of them (tests/test_checkpoint.py: full collections 3.7 -> 0.9 s of the
  main thread's time, of 59 s of CPU)."""
  del session
  gc.collect()
  gc.freeze()


# --------------------------------------------------------------------------------------------
# Tiny runs of the main job: in-process (cheap: one compilation for many runs) and the
# subprocess helpers of tiny_config (a user's command line).
# --------------------------------------------------------------------------------------------
import dataclasses  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402

import pytest  # noqa: E402

import tiny_config  # noqa: E402


@pytest.fixture(scope='session')
def tiny_session(tmp_path_factory) -> tiny_config.Session:
  """The session's image folder and compilation cache for subprocess runs (tiny_config)."""
  return tiny_config.session(tmp_path_factory)


@pytest.fixture(scope='session')
def tiny_reference(tiny_session, tmp_path_factory):
  """(workdir, result) of the uninterrupted subprocess tiny run; runs once. Read it only."""
  return tiny_config.reference_run(tmp_path_factory)


def _init_key(config) -> dict:
  """What trainer.setup builds the jitted init from: the network and its input (model, data),
  the optimizer's transformation, the mesh and layout."""
  optim = config.optim
  return {'model': config.model.to_dict(), 'data': config.data.to_dict(),
          'mesh': config.mesh.to_dict(),
          'tx': [optim.learning_rate, optim.momentum, optim.weight_decay, optim.decay_biases]}


def _steps_key(config) -> dict:
  """What trainer.setup builds the sharded steps from: the init's fields and the batch sizes."""
  return {**_init_key(config), 'batch_size': config.batch_size,
          'eval_batch_size': config.eval.batch_size}


def _same(key, a, b) -> bool:
  return (json.dumps(key(a), sort_keys=True, default=repr)
          == json.dumps(key(b), sort_keys=True, default=repr))


class InProcessRuns:
  """Runs ``trainer.train_and_evaluate`` in this process on small configs.

  Each distinct config is set up (and its steps compiled) once; ``stop_after_train_steps``
  and ``stop_in_eval`` send this process a real SIGTERM at that point, which the loop's
  handler turns into a stop request, as a cluster's preemption would.
  """

  def __init__(self, base: str):
    from alexnet_jax import trainer  # pylint: disable=g-import-not-at-top
    self.trainer = trainer
    self.paths = tiny_config.Session(base)  # the image folder, and new_dir
    self.folder, self.new_dir = self.paths.folder, self.paths.new_dir
    self._setups = {}
    self._real_setup = trainer.setup

  def setup(self, config):
    key = config.to_json_best_effort(sort_keys=True)
    if key not in self._setups:
      s = self._real_setup(config)
      # Configs that differ only in the loop (epochs, policy, logging, evaluation schedule)
      # share the jitted steps, and so their compilations: make_steps is a function of the
      # fields in _steps_key alone, the jitted init of those in _init_key.
      for other in self._setups.values():
        if _same(_init_key, other.config, config):
          s = dataclasses.replace(s, init_state=other.init_state)
          if _same(_steps_key, other.config, config):
            s = dataclasses.replace(s, steps=other.steps)
            break
      self._setups[key] = s
    return self._setups[key]

  def run(self, config, workdir, monkeypatch, stop_after_train_steps: int | None = None,
          stop_in_eval: bool = False, **kwargs):
    base = self.setup(config)
    calls = {'train': 0}

    def train_step(state, batch):
      out = base.steps.train_step(state, batch)
      calls['train'] += 1
      if calls['train'] == stop_after_train_steps:
        os.kill(os.getpid(), signal.SIGTERM)
      return out

    def eval_step(params, batch):
      if stop_in_eval:
        os.kill(os.getpid(), signal.SIGTERM)
      return base.steps.eval_step(params, batch)

    steps = dataclasses.replace(base.steps, train_step=train_step, eval_step=eval_step)
    s = dataclasses.replace(base, steps=steps)
    with monkeypatch.context() as m:
      m.setattr(self.trainer, 'setup', lambda c: s)
      return self.trainer.train_and_evaluate(config, workdir, **kwargs)


@pytest.fixture(scope='session')
def in_process_runs(tmp_path_factory) -> InProcessRuns:
  return InProcessRuns(str(tmp_path_factory.mktemp('in_process')))
