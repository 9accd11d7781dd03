"""Host batches onto the devices ahead of the step that needs them, so transfer overlaps compute.

``jax.make_array_from_process_local_data`` (``layout.place_batch``) starts a transfer and
returns; keeping ``depth`` batches placed ahead of the step gives every transfer a step's time
to finish, for every layout (the placement uses the layout's batch sharding).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator

import numpy as np


def check_uint8(batch: dict) -> dict:
  """The input pipeline ships uint8 crops (4x fewer bytes than float32); refuses anything else."""
  if batch['image'].dtype != np.uint8:
    raise TypeError(f"The input pipeline's images reach the step as {batch['image'].dtype}, not "
                    'uint8: the device makes the float inputs (alexnet_jax.device_augment).')
  return batch


def prefetch_to_device(batches: Iterable[dict], place: Callable[[dict], dict],
                       depth: int = 2) -> Iterator[dict]:
  """Yields ``place(batch)`` for each uint8 host batch, ``depth`` batches placed ahead."""
  ahead = collections.deque()
  for batch in batches:
    ahead.append(place(check_uint8(batch)))
    if len(ahead) > depth:
      yield ahead.popleft()
  while ahead:
    yield ahead.popleft()
