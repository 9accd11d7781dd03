"""XLA:CPU flags the project trains with, and the one place that sets them.

XLA reads ``XLA_FLAGS`` once, when JAX first creates a backend, so the flags must be in the
environment before the first computation. ``python -m alexnet_jax.main`` calls
:func:`use_recommended_cpu_flags` (the benchmark's ``jax_default`` worker gets
:data:`RECOMMENDED_CPU_FLAGS` in its environment); importing :mod:`alexnet_jax.model` from
another project changes nothing in that project's process (call the function yourself, first
thing, to get the same train step).

Each flag is measured in experiments/PERF.md against the same step without it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping, Sequence

RECOMMENDED_CPU_FLAGS = (
    # Copy insertion proves that a donated parameter is read (forward, backward, SGD) before its
    # new value overwrites it: no defensive copies of fc6/fc7/fc8's kernels (270 -> 26 MB copied
    # per step), about 5% of a batch-32 step and 20-70 MiB of peak memory (PERF.md, attempt 14).
    '--xla_cpu_copy_insertion_use_region_analysis=true',
)


def _flag_name(flag: str) -> str:
  return flag.split('=', 1)[0]


def with_flags(xla_flags: str, flags: Sequence[str]) -> str:
  """``xla_flags`` plus each of ``flags`` it does not set already (the user's value wins)."""
  present = {_flag_name(f) for f in xla_flags.split()}
  added = [f for f in flags if _flag_name(f) not in present]
  return ' '.join(xla_flags.split() + added)


def with_recommended_cpu_flags(xla_flags: str) -> str:
  """``xla_flags`` plus each recommended flag it does not set already (the user's value wins)."""
  return with_flags(xla_flags, RECOMMENDED_CPU_FLAGS)


def use_recommended_cpu_flags(environ: MutableMapping[str, str] | None = None) -> bool:
  """Adds :data:`RECOMMENDED_CPU_FLAGS` to ``XLA_FLAGS`` while that can still take effect.

  Returns False (and changes nothing) once JAX has created its backends: the flags would be
  ignored then. The flags only concern XLA's CPU compiler; other backends ignore them.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    return False
  environ = os.environ if environ is None else environ
  environ['XLA_FLAGS'] = with_recommended_cpu_flags(environ.get('XLA_FLAGS', ''))
  return True
