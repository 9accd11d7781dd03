"""The suite's own machinery: conftest.py's malloc settings reach the processes it starts, its
XLA flags reach them too and change no number, the collected imports are frozen for the garbage
collector, pytest-xdist's workers share one tiny reference run, and main_forks.py refuses to
fork while another thread runs."""
import gc
import json
import os
import threading
import platform
import subprocess
import sys
import textwrap

import pytest

import conftest
import main_forks
import tiny_config


# A thread (as XLA's workers are) allocates, touches and frees 48 MiB ten times and prints the
# minor page faults that cost. 48 MiB: above glibc's largest automatic mmap threshold (32 MiB),
# so without the settings each one is mapped and unmapped anew.
_CHILD = r'''
import ctypes, resource, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
def work():
  start = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
  for _ in range(10):
    p = libc.malloc(48 * 2**20)
    ctypes.memset(p, 1, 48 * 2**20)
    libc.free(p)
  faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - start)
t = threading.Thread(target=work); t.start(); t.join()
print(faults[0])
'''
_PAGES = 48 * 2**20 // 4096
_MALLOC_VARIABLES = ('GLIBC_TUNABLES', 'MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_',
                     'MALLOC_TRIM_THRESHOLD_')


def _faults(env: dict) -> int:
  out = subprocess.run([sys.executable, '-c', _CHILD], env=env, capture_output=True, text=True,
                       check=True, timeout=120)
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_the_started_processes_keep_a_threads_big_allocations_mapped():
  expected = ':'.join(f'glibc.malloc.{name}={value}'
                      for name, (_, value) in conftest.MALLOC_SETTINGS.items())
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if any(v in os.environ for v in _MALLOC_VARIABLES[1:]) or (
      tunables != expected and 'glibc.malloc' in tunables):
    pytest.skip('the suite was started with its own malloc settings (they win)')
  assert tunables == expected  # conftest exported its settings
  plain = {k: v for k, v in os.environ.items() if k not in _MALLOC_VARIABLES}
  assert _faults(plain) >= 8 * _PAGES  # mapped and unmapped each time
  assert _faults(dict(os.environ)) <= 2 * _PAGES  # mapped once, reused nine times


# Two train steps of the paper's network (dropout, LRN, max-pools, the CPU's custom gradients
# and conv1's space-to-depth, momentum and weight decay) and a 10-crop evaluation, at the
# smallest input the network takes; prints a hash of every resulting byte.
_NUMBERS = textwrap.dedent("""
    import hashlib, jax, jax.numpy as jnp, numpy as np
    from alexnet_jax import model as model_lib, optim, steps as steps_lib
    model, tx = model_lib.AlexNet(num_classes=10), optim.sgd_with_injected_lr(0.01)
    state = steps_lib.jit_create_train_state(model, tx, (1, 67, 67, 3))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {'image': jnp.asarray(rng.normal(0, 50, (4, 67, 67, 3)), jnp.float32),
             'label': jnp.asarray(rng.integers(0, 10, 4), jnp.int32)}
    step, _ = steps_lib.make_single_device_steps(model, tx)
    for _ in range(2):
      state, metrics = step(state, batch)
    crops = jnp.asarray(rng.normal(0, 50, (2, 10, 67, 67, 3)), jnp.float32)
    probs = jax.jit(model_lib.predict_probabilities, static_argnums=0)(
        model, {'params': state.params}, crops)
    digest = hashlib.sha256()
    for x in jax.tree_util.tree_leaves((state, metrics, probs)):
      digest.update(np.asarray(x).tobytes())
    print(digest.hexdigest())
    """)


def test_the_suites_xla_flags_change_no_number():
  digests = {}
  for flags in ((), conftest.SUITE_XLA_FLAGS):
    env = {**os.environ, 'XLA_FLAGS': ' '.join(('--xla_force_host_platform_device_count=1',)
                                               + flags)}
    out = subprocess.run([sys.executable, '-c', _NUMBERS], env=env, capture_output=True,
                         text=True, check=True, timeout=300)
    digests[flags] = out.stdout.split()[-1]
  assert len(set(digests.values())) == 1, digests


def test_the_child_processes_keep_the_suites_xla_flags_with_their_own_device_count(tmp_path):
  flags = tiny_config.Session(str(tmp_path)).env()['XLA_FLAGS'].split()
  assert set(conftest.SUITE_XLA_FLAGS) <= set(flags)
  assert [f for f in flags if 'device_count' in f] == ['--xla_force_host_platform_device_count=2']


def test_the_collected_imports_are_frozen_for_the_garbage_collector():
  assert gc.get_freeze_count() > 10_000  # JAX, TensorFlow, Orbax: hundreds of thousands


@pytest.mark.skipif(not os.environ.get('PYTEST_XDIST_WORKER'), reason='pytest-xdist only')
def test_the_workers_share_one_reference_run(tiny_session, tiny_reference, tmp_path_factory):
  workdir, _ = tiny_reference
  shared = os.path.join(str(tmp_path_factory.getbasetemp().parent), 'main_job_shared')
  assert os.path.dirname(workdir) == shared  # not this worker's own directory
  assert os.path.dirname(tiny_session.folder) == shared
  entries = os.listdir(os.path.join(shared, 'jax_cache'))
  assert entries  # the run's compiled programs, each linked into this worker's cache
  for name in entries:
    assert os.path.samefile(os.path.join(shared, 'jax_cache', name),
                            os.path.join(tiny_session.cache_dir, name))


def test_main_forks_refuses_to_fork_while_a_thread_runs(tmp_path, monkeypatch):
  # A forked child has no copy of the other threads: a lock one held would stay held forever.
  jobs = tmp_path / 'jobs.json'
  jobs.write_text(json.dumps({'parallel': 1, 'jobs': [
      {'argv': [sys.executable, '-m', 'alexnet_jax.main'], 'stdout': str(tmp_path / 'out'),
       'stderr': str(tmp_path / 'err')}]}))
  release = threading.Event()
  thread = threading.Thread(target=release.wait, name='started_by_a_preload', daemon=True)
  monkeypatch.setattr(main_forks, '_preload', thread.start)
  monkeypatch.setattr(sys, 'argv', ['main_forks.py', str(jobs)])
  pid = os.getpid()
  try:
    with pytest.raises(RuntimeError, match='started_by_a_preload'):
      main_forks.main()
  finally:
    release.set()
  assert os.getpid() == pid and not (tmp_path / 'out').exists()  # nothing was forked
