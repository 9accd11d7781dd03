"""``--profile-ops``: the compiled train step under the JAX profiler, time summed per HLO op and
grouped by layer and phase (forward, backward, weight gradient, optimizer)."""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile

from experiments.bench.runners import JaxTrainRunner


def kernel_shapes(num_classes: int = 1000) -> dict[str, tuple]:
  """Layer -> the shape of each kernel product's result: a grouped layer's kernel is computed
  one group at a time, so its shape is one group's (from the model's table and parameters)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  model = model_lib.AlexNet(num_classes=num_classes)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 227, 227, 3), jnp.float32))['params']
  groups = {name: g for name, *_, g in model.conv_layers}
  shapes = {}
  for name in model_lib.LAYER_NAMES:
    shape = tuple(params[name]['kernel'].shape)
    g = groups.get(name, 1)
    shapes[name] = shape[:-1] + (shape[-1] // g,)
  return shapes


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
  """name -> {'shape', 'opcode', 'op_name', 'root'} for every instruction of an HLO module."""
  out, roots, computation = {}, {}, None
  for line in hlo_text.splitlines():
    if line and not line.startswith(' ') and line.rstrip().endswith('{'):
      words = line.split()
      computation = (words[1] if words[0] == 'ENTRY' else words[0]).lstrip('%')
      continue
    m = re.match(r'\s*(ROOT )?%(\S+) = (\S+?(?:\{[^}]*\})?) ([\w-]+)\(', line)
    if not m:
      continue
    op_name = re.search(r'op_name="([^"]+)"', line)
    calls = re.search(r'calls=%([\w.-]+)', line)
    out[m.group(2)] = {'shape': m.group(3), 'opcode': m.group(4),
                       'op_name': op_name.group(1) if op_name else '',
                       'calls': calls.group(1) if calls else None}
    if m.group(1):
      roots[computation] = m.group(2)
  for info in out.values():
    root = roots.get(info['calls']) if info['calls'] else None
    info['root'] = out[root] if root in out else None
  return out


def classify(info: dict, shapes: dict[str, tuple]) -> tuple[str, str]:
  """(layer, phase) of one executed instruction, from its op_name metadata or its shape."""
  op_name = info['op_name'] or (info['root'] or {}).get('op_name', '')
  phase = 'backward' if 'transpose(' in op_name else 'forward'
  m = re.search(r'/(conv\d|fc\d)/', op_name)
  if m:
    return m.group(1), phase
  if '_norm_pool' in op_name or 'max_pool' in op_name:
    kind = 'lrn' if re.search(r'(reduce_window_sum|rsqrt|sqrt|integer_pow|_lrn|cumsum|dot)',
                              op_name) else 'lrn/pool'
    return kind, phase
  if 'Dropout' in op_name or '/relu' in op_name or '/max' in op_name:
    return 'relu/dropout/pool', phase
  bracket = re.search(r'\[([\d,]*)\]', info['shape'])
  dims = tuple(int(d) for d in bracket.group(1).split(',') if d) if bracket else ()
  for layer, kshape in shapes.items():
    if dims and sorted(dims) == sorted(kshape):
      # A kernel-shaped result: its weight gradient, or the optimizer update of the kernel.
      return layer, ('weight grad' if info['opcode'] == 'fusion' and info['root'] and
                     info['root']['opcode'] in ('convolution', 'dot') else 'optimizer')
  if op_name in ('', 'jit(<lambda>)/add', 'jit(<lambda>)/mul') or op_name.endswith('/add'):
    return 'optimizer/other', ''
  return 'other', phase


def _traced_op_ms(runner, steps: int) -> tuple[list[float], collections.Counter]:
  """Wall time of ``steps`` steps under the profiler and the mean ms per step of each op."""
  import jax  # pylint: disable=g-import-not-at-top
  instructions = hlo_instructions(runner.compiled.as_text())
  with tempfile.TemporaryDirectory() as tmp:
    walls = []
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        walls.append(runner.step()[0])
    traces = glob.glob(os.path.join(tmp, '**', '*perfetto_trace.json.gz'), recursive=True)
    with gzip.open(traces[0]) as f:
      events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  per_op = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e.get('name') in instructions:
      per_op[e['name']] += e.get('dur', 0) / 1e3 / steps
  return walls, per_op


def profile_ops(batch: int, model_options: dict, steps: int = 3, top: int = 25) -> dict:
  """Runs the compiled train step under the JAX profiler and sums the time of each HLO op.

  Needs ``--xla_cpu_enable_xprof_traceme=true`` in XLA_FLAGS before JAX starts (set by the
  command line). Ops of a thunk executor may overlap: the op sum can exceed the step.
  """
  runner = JaxTrainRunner(batch, model_options)
  runner.setup()
  for _ in range(2):
    runner.step()
  instructions = hlo_instructions(runner.compiled.as_text())
  walls, per_op = _traced_op_ms(runner, steps)
  shapes = kernel_shapes()
  groups = collections.Counter()
  ops = []
  for name, ms in per_op.most_common():
    info = instructions[name]
    layer, phase = classify(info, shapes)
    groups[f'{layer} {phase}'.strip()] += ms
    ops.append({'op': name, 'ms': ms, 'shape': info['shape'], 'layer': layer, 'phase': phase,
                'op_name': info['op_name'] or (info['root'] or {}).get('op_name', ''),
                'root': (info['root'] or {}).get('opcode', info['opcode'])})
  return {'batch': batch, 'options': model_options, 'step_ms': statistics.median(walls) * 1e3,
          'op_sum_ms': sum(per_op.values()), 'groups': dict(groups.most_common()),
          'top_ops': ops[:top], 'ops': ops}


def profile_ops_markdown(prof: dict) -> str:
  lines = [f'Per-op profile of the compiled step, batch {prof["batch"]}, options '
           f'{prof["options"] or "defaults"}: step {prof["step_ms"]:.0f} ms (median), sum of op '
           f'times {prof["op_sum_ms"]:.0f} ms.', '', '| layer / phase | ms | share |',
           '|---|---|---|']
  for group, ms in prof['groups'].items():
    lines.append(f'| {group} | {ms:.1f} | {100 * ms / prof["op_sum_ms"]:.1f}% |')
  lines += ['', '| op | root | shape | layer | phase | ms |', '|---|---|---|---|---|---|']
  for op in prof['top_ops']:
    lines.append(f'| {op["op"]} | {op["root"]} | {op["shape"].split("{")[0]} | {op["layer"]} | '
                 f'{op["phase"]} | {op["ms"]:.1f} |')
  return '\n'.join(lines) + '\n'
