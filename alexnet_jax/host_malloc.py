"""glibc malloc settings for the main job's process: one arena, no mmap'd chunks, no trimming.

XLA:CPU allocates a step's temporaries (hundreds of MB for AlexNet) with malloc. glibc serves a
large request with ``mmap`` and returns it with ``munmap`` when freed, so every step faulted its
temporaries' pages in anew: 14.4 M minor page faults and about 26 s of system time in 120
default steps, on 2 cores that the step itself needs. With no ``mmap``'d chunks, no trimming
below 2 GiB of free memory and one arena, the pages are kept and reused.

One arena, because a thread's own arena (glibc's default) grows in heaps of at most 64 MiB and
maps anything larger whatever the settings; with two arenas, which of XLA's threads landed on
the second was a matter of timing: page faults 0.8-6.2 M in some runs, 14.4 M (no gain) in
others. With one, every thread allocates from the main heap, in every run.

Measured on the project's 2-core Intel Xeon VM (2026-12-01, experiments/PERF.md attempt 15), the
default config, 120 steps: without the settings 0.566 and 0.568 s per step (steps 20-120), 14.4 M
minor faults, 26 s system time; with them from the process's start (``GLIBC_TUNABLES``) 0.510
and 0.518 s per step, 0.7-0.9 M faults, 5.3-5.5 s system time, user time +7-8 s; set by this
module, 0.530 and 0.555 s per step (steps 10-120), 0.7-0.8 M faults, 5.6 s system time, user
time +9-15 s. The loss
is the same to every digit (the allocator does not change the numbers). The price is host
memory: freed pages stay with the process (peak RSS 2.1 -> 3.1-3.8 GB).

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
SETTINGS = {'arena_max': (-8, 1), 'mmap_max': (-4, 0), 'trim_threshold': (-1, 2**31 - 1)}
# The variables by which a user sets glibc's malloc themselves; any of them wins over ours.
_USER_SETTINGS = ('GLIBC_TUNABLES', 'MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_',
                  'MALLOC_TRIM_THRESHOLD_')


def glibc_tunables() -> str:
  """The same settings as a ``GLIBC_TUNABLES`` value, for a process started with them."""
  return ':'.join(f'glibc.malloc.{name}={value}' for name, (_, value) in SETTINGS.items())


def use_for_this_process() -> bool:
  """Applies :data:`SETTINGS` to this process with ``mallopt``; returns whether it did.

  Does nothing where libc is not glibc or where the environment already sets glibc's malloc.
  Call it before the process starts any thread: a thread keeps the arena it took at its first
  allocation.
  """
  if platform.libc_ver()[0] != 'glibc' or any(v in os.environ for v in _USER_SETTINGS):
    return False
  libc = ctypes.CDLL(ctypes.util.find_library('c') or None)
  # mallopt returns 1 on success.
  return all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1
             for param, value in SETTINGS.values())
