"""Bytes each device sends per train step in each layout, counted from the compiled program.

Run (CPU only; 4 fake devices; 15-30 s per layout on 2 cores, 6 layouts):

    python experiments/comm_bytes.py                    # the paper's batch 128, 1000 classes
    python experiments/comm_bytes.py --batch 256 --num_classes 1000

For each layout the sharded train step (``alexnet_jax.layout.make_steps``) is lowered on abstract
inputs (``jax.ShapeDtypeStruct`` with shardings: no parameters are materialised) and compiled
for the fake CPU devices. Every collective of the compiled HLO (all-gather, all-reduce,
reduce-scatter, all-to-all, collective-permute) gives its shapes and replica groups; with ``n``
devices in a group, one device sends (and receives) under the bandwidth-optimal ring algorithms:

    all-gather       (n - 1) / n * result bytes      (its own piece to the n - 1 others)
    reduce-scatter   (n - 1) / n * operand bytes
    all-reduce       2 (n - 1) / n * operand bytes   (a reduce-scatter, then an all-gather)
    all-to-all       (n - 1) / n * operand bytes
    collective-permute  operand bytes

Each collective is put in one column by what it carries, read from its ``op_name`` metadata:
forward activations (the layout's all_gathers), their gradients on the way back (the
transposes, ``transpose(...)``), parameter gradients (the psum over the axes a parameter is
replicated on) and the step's three metrics (scalars). A hand count from the paper's layer
shapes (``hand_count``) is printed beside each and must agree.

The table in docs/layouts.md is this script's output.
"""

from __future__ import annotations

import os

# The fake devices must exist before JAX starts its CPU backend.
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import dataclasses
import math
import re
import sys
import time

import jax
import numpy as np

from alexnet_jax import layout as layout_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import steps as steps_lib

# (label, layout, mesh data, mesh model).
# Two devices (the paper's two GPUs) under each scheme, then four devices.
CASES = (
    ('data parallel', 'towers', 2, 1),
    ('towers (the paper)', 'towers', 1, 2),
    ('one weird trick', 'one_weird_trick', 1, 2),
    ('data parallel', 'towers', 4, 1),
    ('towers x data', 'towers', 2, 2),
    ('one weird trick', 'one_weird_trick', 2, 2),
)
COLUMNS = ('forward', 'backward', 'gradients', 'metrics')

_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
                'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}
_KINDS = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+(?P<kind>' + '|'.join(_KINDS) +
    r')(?P<suffix>-start|-done)?\((?P<rest>.*)$')
_ARRAY = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')


# --------------------------------------------------------------------------------------------
# Reading the compiled HLO
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str                          # e.g. 'all-gather'
  arrays: tuple[tuple[str, tuple[int, ...]], ...]   # (dtype, shape) of each result
  group_size: int
  op_name: str


def _array_bytes(dtype: str, shape: tuple[int, ...]) -> int:
  return _DTYPE_BYTES[dtype] * math.prod(shape)


def _group_size(rest: str, num_devices: int) -> int:
  """Devices per replica group, from ``replica_groups={{0,1},{2,3}}`` or the iota form."""
  match = re.search(r'replica_groups=\{((?:\{[\d,]*\},?)*)\}', rest)
  if match:
    groups = re.findall(r'\{([\d,]*)\}', match.group(1))
    if not groups:  # {}: one group of every device
      return num_devices
    sizes = {len(g.split(',')) for g in groups}
  else:
    # [groups, size]<=[dims]T(perm): an iota of the devices, reshaped (and transposed).
    match = re.search(r'replica_groups=\[(\d+),(\d+)\]<=', rest)
    if not match:
      if 'source_target_pairs' in rest:  # collective-permute: point to point
        return 2
      raise ValueError(f'No replica groups in: {rest[:200]}')
    sizes = {int(match.group(2))}
  if len(sizes) != 1:
    raise ValueError(f'Replica groups of different sizes: {rest[:200]}')
  return sizes.pop()


def collectives(hlo_text: str, num_devices: int) -> list[Collective]:
  """Every collective of a compiled HLO module (async ``-start`` halves are skipped: their
  ``-done`` half carries the result)."""
  found = []
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match or match.group('suffix') == '-start':
      continue
    arrays = tuple((dtype, tuple(int(d) for d in dims.split(',') if d))
                   for dtype, dims in _ARRAY.findall(match.group('shape')))
    op_name = re.search(r'op_name="([^"]*)"', line)
    found.append(Collective(match.group('kind'), arrays,
                            _group_size(match.group('rest'), num_devices),
                            op_name.group(1) if op_name else ''))
  return found


def bytes_sent(c: Collective) -> dict[str, float]:
  """Bytes one device sends for one collective, split into the table's columns."""
  n = c.group_size
  out = dict.fromkeys(COLUMNS, 0.0)
  for dtype, shape in c.arrays:
    size = _array_bytes(dtype, shape)
    if c.kind == 'all-gather':
      sent = size * (n - 1) / n
    elif c.kind == 'reduce-scatter':
      sent = size * (n - 1)            # the result is 1/n of the operand
    elif c.kind == 'all-reduce':
      sent = 2 * size * (n - 1) / n
    elif c.kind == 'all-to-all':
      sent = size * (n - 1) / n
    else:
      sent = size
    if c.kind == 'all-reduce':
      column = 'metrics' if not shape else 'gradients'
    elif 'transpose(' in c.op_name:
      column = 'backward'
    else:
      column = 'forward'
    out[column] += sent
  return out


# --------------------------------------------------------------------------------------------
# The hand count, from the paper's shapes
# --------------------------------------------------------------------------------------------
CONV_PARAMS = 34_944 + 307_456 + 885_120 + 663_936 + 442_624   # conv1..conv5, the paper's table


def fc_params(num_classes: int) -> int:
  return (9216 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * num_classes + num_classes)


def hand_count(layout: str, data: int, model: int, batch: int,
               num_classes: int) -> dict[str, float]:
  """Bytes one device sends per train step, fp32, from the network's shapes (see docs)."""
  f = 4  # bytes per fp32 value
  share = (model - 1) / model   # of a gathered array, the part that came from elsewhere
  if layout == 'towers':
    rows = batch // data        # each device sees its data shard's rows, both towers the same
    gathered = rows * (13 * 13 * 256 + 6 * 6 * 256 + 4096 + 4096 + num_classes)
    forward = backward = gathered * share * f
    params_here = (CONV_PARAMS + fc_params(num_classes)) / model
    gradients = 2 * params_here * f * (data - 1) / data
  elif layout == 'one_weird_trick':
    rows = batch // data        # the fc layers see the model group's rows (conv rows * model)
    gathered = rows * (6 * 6 * 256 + 4096 + 4096 + num_classes)
    backward = gathered * share * f
    forward = backward + rows * share * 4   # the labels (int32) follow the rows to fc8's loss
    devices = data * model
    gradients = (2 * CONV_PARAMS * f * (devices - 1) / devices +
                 2 * fc_params(num_classes) / model * f * (data - 1) / data)
  else:
    raise ValueError(layout)
  devices = data * model
  metrics = 3 * 2 * f * (devices - 1) / devices
  return {'forward': forward, 'backward': backward, 'gradients': gradients, 'metrics': metrics}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def compiled_train_step_hlo(layout_name: str, data: int, model: int, batch: int,
                            num_classes: int) -> str:
  """The compiled HLO text of the sharded train step, from abstract inputs only."""
  net = model_lib.AlexNet(num_classes=num_classes)
  tx = optim.sgd_with_injected_lr(0.01)
  abstract = jax.eval_shape(lambda rng: steps_lib.create_train_state(rng, net, tx),
                            jax.random.PRNGKey(0))
  mesh = layout_lib.make_mesh(data, model, devices=jax.devices()[:data * model])
  layout = layout_lib.get_layout(layout_name)
  layout_lib.check_batch(batch, mesh, layout)
  steps = layout_lib.make_steps(net, tx, mesh, layout, abstract)
  state = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
      steps.state_sharding)
  images = jax.ShapeDtypeStruct((batch, 227, 227, 3), np.float32, sharding=steps.batch_sharding)
  labels = jax.ShapeDtypeStruct((batch,), np.int32, sharding=steps.batch_sharding)
  lowered = steps.train_step.lower(state, {'image': images, 'label': labels})
  return lowered.compile().as_text()


def _mb(x: float) -> str:
  return f'{x / 1e6:,.2f}'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--details', action='store_true',
                      help='also list every collective of each program (to stderr)')
  args = parser.parse_args(argv)

  rows, mismatches = [], []
  for label, layout_name, data, model in CASES:
    start = time.time()
    hlo = compiled_train_step_hlo(layout_name, data, model, args.batch, args.num_classes)
    counted = dict.fromkeys(COLUMNS, 0.0)
    for c in collectives(hlo, data * model):
      sent = bytes_sent(c)
      for column, value in sent.items():
        counted[column] += value
      if args.details:
        shapes = ', '.join(f'{dtype}{list(shape)}' for dtype, shape in c.arrays)
        where = ', '.join(f'{k} {v:,.0f} B' for k, v in sent.items() if v)
        print(f'  {label} {data}x{model}: {c.kind} over {c.group_size}: {shapes} -> {where}',
              file=sys.stderr)
    hand = hand_count(layout_name, data, model, args.batch, args.num_classes)
    for column in COLUMNS:
      if not math.isclose(counted[column], hand[column], rel_tol=1e-9, abs_tol=1e-6):
        mismatches.append(f'{label}: {column} counted {counted[column]:.0f}, hand '
                          f'{hand[column]:.0f}')
    rows.append((label, layout_name, data, model, counted, hand))
    print(f'# {label}: compiled and counted in {time.time() - start:.0f} s', file=sys.stderr)

  print(f'Bytes one device sends per train step (MB = 1e6 bytes), batch {args.batch}, '
        f'{args.num_classes} classes, fp32:\n')
  print('| layout | mesh (data x model) | forward activations | their gradients (backward) '
        '| parameter gradients | total (compiled HLO) | hand count |')
  print('|---|---|---:|---:|---:|---:|---:|')
  for label, layout_name, data, model, counted, hand in rows:
    total = sum(counted.values())
    print(f'| {label} (`{layout_name}`) | {data} x {model} | {_mb(counted["forward"])} | '
          f'{_mb(counted["backward"])} | {_mb(counted["gradients"])} | {_mb(total)} | '
          f'{_mb(sum(hand.values()))} |')
  print('\n(Totals include the 3 scalar metrics, at most 18 bytes.)')
  print(f'\nCommand: python experiments/comm_bytes.py --batch {args.batch} '
        f'--num_classes {args.num_classes}  (jax {jax.__version__}, '
        f'{len(jax.devices())} fake {jax.devices()[0].platform} devices)')
  if mismatches:
    print('\nHLO and hand count disagree:\n  ' + '\n  '.join(mismatches), file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
