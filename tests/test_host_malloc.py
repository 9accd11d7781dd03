"""The main job's glibc settings keep a worker thread's big allocations mapped between uses."""
import os
import platform
import subprocess
import sys

import pytest

from alexnet_jax import host_malloc

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')

# A thread (as XLA's workers are) allocates, touches and frees 48 MiB ten times; the child prints
# whether the settings were applied and the minor page faults that cost. 48 MiB: above glibc's
# largest automatic mmap threshold (32 MiB), below a thread arena's heap size (64 MiB), above
# which a thread's request is mapped whatever the settings.
_CHILD = r'''
import ctypes, ctypes.util, resource, sys, threading
libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
applied = False
if sys.argv[1] == 'settings':
  from alexnet_jax import host_malloc
  applied = host_malloc.use_for_this_process()
faults = []
def work():
  start = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
  for _ in range(10):
    p = libc.malloc(48 * 2**20)  # every page written (as XLA's own malloc calls)
    ctypes.memset(p, 1, 48 * 2**20)
    libc.free(p)
  faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - start)
t = threading.Thread(target=work); t.start(); t.join()
print(applied, faults[0])
'''
_PAGES = 48 * 2**20 // 4096


def _run(mode: str, **env_extra) -> tuple[bool, int]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('MALLOC_') and k != 'GLIBC_TUNABLES'}
  env.update(env_extra)
  out = subprocess.run([sys.executable, '-c', _CHILD, mode], env=env, capture_output=True,
                       text=True, check=True, timeout=120)
  applied, faults = out.stdout.split()[-2:]
  return applied == 'True', int(faults)


def test_a_threads_big_allocations_fault_in_once_with_the_settings_and_every_time_without():
  (_, without), (applied, with_settings) = _run('plain'), _run('settings')
  assert applied
  assert without >= 8 * _PAGES  # glibc maps and unmaps each array anew
  assert with_settings <= 2 * _PAGES  # mapped once, reused nine times


def test_the_environment_form_has_the_same_effect():
  _, faults = _run('plain', GLIBC_TUNABLES=host_malloc.glibc_tunables())
  assert faults <= 2 * _PAGES


def test_a_users_own_malloc_setting_wins():
  applied, faults = _run('settings', MALLOC_ARENA_MAX='4')
  assert not applied
  assert faults >= 8 * _PAGES  # the user's setting alone: glibc's default mmap behaviour


def test_the_main_job_applies_the_settings_before_any_thread_starts():
  # ``python -m alexnet_jax.main`` runs the module as __main__: the call comes before its first
  # import of a library that may start threads (absl, then JAX, TensorFlow).
  import inspect  # pylint: disable=g-import-not-at-top
  from alexnet_jax import main  # pylint: disable=g-import-not-at-top
  source = inspect.getsource(main)
  call = source.index("if __name__ == '__main__':\n")
  assert source.index('host_malloc.use_for_this_process()', call) < source.index('from absl')

