"""A clean stop on SIGTERM / SIGINT (how clusters preempt): the signal becomes a request that
the training loop honours between steps, agreed by every process of a multi-process job."""

from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils
import numpy as np


class StopRequest:
  """Turns SIGTERM/SIGINT into a request the loop honours between steps (a context manager:
  the handlers are installed on entry and the previous ones put back on exit)."""

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    self.signal_name = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def agreed(self, at_sync_point: bool) -> str | None:
    """The signal to stop on, agreed by every process (a preemption may reach only one).

    With several processes, they compare their requests only at steps that are sync points for
    all of them; a process that stopped alone would leave the others waiting in a collective.
    """
    if jax.process_count() == 1:
      return self.signal_name
    if not at_sync_point:
      return None
    asked = multihost_utils.process_allgather(np.int32(self.signal_name is not None))
    if not np.any(asked):
      return None
    return self.signal_name or 'a signal to another process'
