"""glibc malloc settings for the main job's process: two arenas, no mmap'd chunks, no trimming.

XLA:CPU allocates a step's temporaries (hundreds of MB for AlexNet) from its worker threads.
glibc serves a large request from a thread's arena with ``mmap`` and returns it with ``munmap``
when freed, so every step faulted its temporaries' pages in anew: 14.4 M minor page faults and
about 25 s of system time in 120 default steps, on 2 cores that the step itself needs.
With no ``mmap``'d chunks, no trimming below 2 GiB of free memory and at most two arenas, the
pages are kept and reused.

Measured on the project's 2-core Intel Xeon VM (experiments/PERF.md, attempt 15): the default
config, 120 steps, three alternating pairs without / with these settings: 0.561 / 0.492,
0.558 / 0.478, 0.546 / 0.479 s per step, system time 25-26 s -> 4.5-11 s, user time +3-5 s,
the same loss to every digit. The price is host memory: freed pages stay with the process (peak
RSS 2.1-2.2 -> 2.6-4.0 GB). One arena instead of two (tried first) made XLA's threads wait for
each other's allocations: user time +15-21 s, and one pair of three slower than without.

Only ``python -m alexnet_jax.main`` calls :func:`use_for_this_process`; importing
:mod:`alexnet_jax.model` changes nothing in another project's process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# (mallopt's parameter number in glibc's malloc.h, the value). mallopt takes a C int: trimming
# starts at 2 GiB free at the heap's top.
SETTINGS = {'arena_max': (-8, 2), 'mmap_max': (-4, 0), 'trim_threshold': (-1, 2**31 - 1)}
# The variables by which a user sets glibc's malloc themselves; any of them wins over ours.
_USER_SETTINGS = ('GLIBC_TUNABLES', 'MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_',
                  'MALLOC_TRIM_THRESHOLD_')


def glibc_tunables() -> str:
  """The same settings as a ``GLIBC_TUNABLES`` value, for a process started with them."""
  return ':'.join(f'glibc.malloc.{name}={value}' for name, (_, value) in SETTINGS.items())


def use_for_this_process() -> bool:
  """Applies :data:`SETTINGS` to this process with ``mallopt``; returns whether it did.

  Does nothing where libc is not glibc or where the environment already sets glibc's malloc.
  Call it before the process starts its compute threads (before JAX creates a backend): a
  thread keeps the arena it took at its first allocation.
  """
  if platform.libc_ver()[0] != 'glibc' or any(v in os.environ for v in _USER_SETTINGS):
    return False
  libc = ctypes.CDLL(ctypes.util.find_library('c') or None)
  # mallopt returns 1 on success.
  return all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1
             for param, value in SETTINGS.values())
