"""The parameter initialisation compiled with JAX's unrolled Threefry hash on the CPU.

Every ``jax.random`` draw hashes counters with Threefry-2x32. JAX lowers the hash as straight-line
code on GPUs and TPUs, and as a rolled loop (5 iterations of 4 rounds) on the CPU. The network's
initialisation draws one hash per weight tensor, and XLA:CPU compiles those loops slowly: the jitted
train-state init at 67 px took 6.2 s of CPU to compile and 0.7 s to run. With the unrolled form it
took 1.1 s and 0.3 s; at 227 px it took 4.7 and 1.8 s before, 1.6 and 0.6 s after (2-core AMD EPYC).
Both forms compute the same 32-bit integers, so every parameter is the same to the bit
(tests/test_unrolled_threefry.py checks this).

The train step keeps JAX's CPU form: its dropout masks compiled slower unrolled (a 67-px step with
the suite's XLA flags went from 4.8 to 7.4 s of CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax


@contextlib.contextmanager
def on_cpu() -> Iterator[None]:
  """While open, programs lowered for the CPU use the unrolled Threefry, as other platforms do.

  It swaps a lowering rule in JAX's registry (private API): outside this JAX's layout it changes
  nothing. Lowering runs in the calling thread; do not lower other programs on other threads
  while it is open.
  """
  try:
    from jax._src.interpreters import mlir  # pylint: disable=g-import-not-at-top
    from jax._src.random import threefry2x32  # pylint: disable=g-import-not-at-top
    cpu_rules = mlir._platform_specific_lowerings['cpu']  # pylint: disable=protected-access
    primitive = threefry2x32.threefry2x32_p
    rolled = cpu_rules[primitive]
    unrolled = mlir._lowerings[primitive]  # pylint: disable=protected-access
  except (ImportError, AttributeError, KeyError):
    yield
    return
  cpu_rules[primitive] = unrolled
  try:
    yield
  finally:
    cpu_rules[primitive] = rolled


class Jitted:
  """``jax.jit(fn, **jit_kwargs)``, lowered inside :func:`on_cpu` on its first call per shape.

  Later calls take jit's compiled program as before; other attributes are the jitted function's.
  """

  def __init__(self, fn: Callable[..., Any], **jit_kwargs):
    self.jitted = jax.jit(fn, **jit_kwargs)

  def __call__(self, *args, **kwargs):
    with on_cpu():
      return self.jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with on_cpu():
      return self.jitted.lower(*args, **kwargs)

  def __getattr__(self, name: str):
    return getattr(self.jitted, name)


def jit(fn: Callable[..., Any], **jit_kwargs) -> Jitted:
  """``jax.jit`` for functions that initialise parameters (see the module docstring)."""
  return Jitted(fn, **jit_kwargs)
