"""glibc malloc settings for the main job's process: one arena, no mmap'd chunks, no trimming.

XLA:CPU allocates a step's temporaries (hundreds of MB for AlexNet) from its worker threads.
glibc gives each such thread its own arena, whose heaps are at most 64 MB; a bigger request is
served by ``mmap`` and returned by ``munmap`` when freed, and ``MALLOC_MMAP_MAX_=0`` does not stop
that in a thread's arena. So every step faulted its temporaries' pages in anew. With one arena
for all threads, no ``mmap`` chunks and no trimming, the pages are kept and reused.

Measured on the project's 2-core Intel Xeon VM, default config, 90 steps (experiments/PERF.md):
11.1 M minor page faults and 18.8 s of system time without these settings, 0.8-1.0 M and
4.9-5.3 s with them; 0.556 -> 0.509 and 0.564 -> 0.527 s per step in two alternating pairs. The
price is host memory: freed pages are not given back to the system (peak RSS 3.0 -> 3.3-3.9 GB).

Only ``python -m alexnet_jax.main`` (and the benchmark's worker for the main job's step) calls
:func:`use_for_this_process`; importing :mod:`alexnet_jax.model` changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# (mallopt's parameter number in glibc's malloc.h, the environment variable glibc reads for it at
# start-up, the value). mallopt takes a C int: trimming starts at 2 GiB free at the heap's top.
_SETTINGS = ((-8, 'MALLOC_ARENA_MAX', 1), (-4, 'MALLOC_MMAP_MAX_', 0),
             (-1, 'MALLOC_TRIM_THRESHOLD_', 2**31 - 1))
# The same settings for a child process (the benchmark's worker for the main job's step).
ENV = {name: str(value) for _, name, value in _SETTINGS}


def use_for_this_process() -> bool:
  """Sets one arena, no mmap'd chunks and no trimming; False where libc is not glibc.

  Call it before the process starts its threads (before JAX creates a backend): a thread keeps
  the arena it took at its first allocation.
  """
  if platform.libc_ver()[0] != 'glibc':
    return False
  libc = ctypes.CDLL(ctypes.util.find_library('c') or None)
  # mallopt returns 1 on success.
  return all(libc.mallopt(ctypes.c_int(p), ctypes.c_int(v)) == 1 for p, _, v in _SETTINGS)
