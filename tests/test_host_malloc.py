"""The main job's glibc settings keep a worker thread's big allocations mapped between uses."""
import os
import platform
import subprocess
import sys

import pytest

from alexnet_jax import host_malloc

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')

# A thread (as XLA's workers are) allocates, touches and frees 128 MiB ten times; the child
# prints the minor page faults that cost.
_CHILD = r'''
import ctypes, ctypes.util, resource, sys, threading
libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == 'settings':
  from alexnet_jax import host_malloc
  assert host_malloc.use_for_this_process()
faults = []
def work():
  start = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
  for _ in range(10):
    p = libc.malloc(2**27)  # 128 MiB, every page written (as XLA's own malloc calls)
    ctypes.memset(p, 1, 2**27)
    libc.free(p)
  faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - start)
t = threading.Thread(target=work); t.start(); t.join()
print(faults[0])
'''
_PAGES = 128 * 2**20 // 4096


def _faults(mode: str) -> int:
  env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
  out = subprocess.run([sys.executable, '-c', _CHILD, mode], env=env, capture_output=True,
                       text=True, check=True, timeout=120)
  return int(out.stdout.split()[-1])


def test_a_threads_big_allocations_fault_in_once_with_the_settings_and_every_time_without():
  without, with_settings = _faults('plain'), _faults('settings')
  assert without >= 8 * _PAGES  # glibc maps and unmaps each 128 MiB array anew
  assert with_settings <= 2 * _PAGES  # mapped once, reused nine times


def test_the_environment_form_names_the_same_values():
  assert host_malloc.ENV == {'MALLOC_ARENA_MAX': '1', 'MALLOC_MMAP_MAX_': '0',
                             'MALLOC_TRIM_THRESHOLD_': str(2**31 - 1)}
