"""What makes a run's numbers what they are beyond its config: the ``run`` section of its
``config.json`` (the CPU, the library versions, the backend, the implementations the model's
'auto' options resolved to), and the note a resume on another machine prints."""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any

import jax
import numpy as np

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import model as model_lib


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo`` on Linux, else what the platform module knows)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.lower().startswith(('model name', 'hardware')):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or 'unknown'


def describe(model: model_lib.AlexNet) -> dict[str, Any]:
  """The run section of config.json for a run of ``model`` on this machine.

  A run is bit-reproducible on the same machine with the same library versions, not across
  CPUs: this records the CPU, the library versions, the backend and the implementations the
  'auto' model options resolved to, so that two users can see why their numbers differ. A
  resume on another machine is allowed (and noted in the new config.json).
  """
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint  # pylint: disable=g-import-not-at-top
  return {
      'cpu': cpu_model(),
      'backend': jax.default_backend(),
      'devices': sorted({d.device_kind for d in jax.devices()}),
      'device_count': jax.device_count(),
      'process_count': jax.process_count(),
      'python': platform.python_version(),
      'versions': {'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
                   'flax': flax.__version__, 'optax': optax.__version__,
                   'orbax-checkpoint': orbax.checkpoint.__version__,
                   'numpy': np.__version__},
      'model_impls': dict(model.impls()),
  }


def note_another_machine(workdir: str, info: dict[str, Any]) -> None:
  """A note (not a refusal) when a run resumes on another CPU, library or implementation."""
  try:
    with open(os.path.join(workdir, checkpoint_lib.CONFIG_FILE), encoding='utf-8') as f:
      before = json.load(f).get('run')
  except (OSError, ValueError, AttributeError):  # missing or damaged: a record, nothing more
    return
  if not isinstance(before, dict):
    return
  changed = [key for key in ('cpu', 'backend', 'versions', 'model_impls')
             if key in before and before[key] != info[key]]
  if changed:
    print(f'note: this workdir was trained with another {", ".join(changed)} before (see its '
          f'{checkpoint_lib.CONFIG_FILE}); the run continues, but its numbers will not equal '
          'those of an uninterrupted run there to every digit.', file=sys.stderr, flush=True)
