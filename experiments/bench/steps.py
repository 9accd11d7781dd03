"""The training-step benchmark: every configuration in its own worker, timed in alternation.

Workers start one after another (compile times are not inflated by each other), then the parent
runs rounds: in each round every worker runs one timed step while the others wait idle on a
pipe, in an order rotated each round, with a short pause between steps (so one library's
spinning thread pool does not steal the next one's cores). A change of machine load during the
run therefore affects every configuration alike: this is what "alternating in one run" means
here. The medians of the timed steps (after the warm-up steps) are reported.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from experiments.bench import configs as configs_lib
from experiments.bench import flops as flops_lib
from experiments.bench import workers as workers_lib
from experiments.bench.configs import Config


def run_rounds(workers: dict[str, Any], steps: int, gap_s: float,
               log: Callable[[str], None] = print) -> dict[str, list[dict]]:
  """``steps`` rounds; each runs one step of every worker, order rotated by one each round."""
  names = list(workers)
  out = {name: [] for name in names}
  for r in range(steps):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      time.sleep(gap_s)
      out[name].append(workers[name].step())
    log(f'  round {r + 1}/{steps}: ' + ', '.join(
        f'{n} {out[n][-1]["t"] * 1e3:.0f} ms' for n in names))
  return out


def timing_row(config: Config, batch: int, info: dict, steps: list[dict], end: dict) -> dict:
  """The raw times of one configuration and their median, min, max and CPU seconds."""
  times = [s['t'] for s in steps]
  cpu = [s.get('cpu_s', float('nan')) for s in steps]
  return {'config': config.name, 'label': config.label, 'kind': config.kind, 'mode': config.mode,
          'model_options': config.model, 'xla_flags_extra': config.xla_flags, 'batch': batch,
          'step_times_s': times, 'median_s': statistics.median(times), 'min_s': min(times),
          'max_s': max(times), 'step_cpu_s': cpu, 'median_cpu_s': statistics.median(cpu),
          'losses': [s['loss'] for s in steps], **info, **end}


def summarize(config: Config, batch: int, info: dict, steps: list[dict], end: dict,
              flops: dict) -> dict:
  """One result row: raw times and the derived rates."""
  row = timing_row(config, batch, info, steps, end)
  median = row['median_s']
  if config.kind.startswith('matmul'):
    row['gflops'] = info['flops'] / median / 1e9
    return row
  if config.kind == 'torch' and config.mode == 'compile':
    # torch.compile compiles during the first call.
    row['compile_s'] = info['first_step_s'] - median
  row['images_per_s'] = batch / median
  row['analytic_flops'] = flops['step']
  row['gflops'] = flops['step'] / median / 1e9
  if row.get('xla_flops'):
    row['xla_flops_per_image'] = row['xla_flops'] / batch
  return row


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo ('' where there is none)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      names = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
  except OSError:
    return ''
  return names[0] if names else ''


def machine_info(modules: Sequence[str] = ('jax', 'jaxlib', 'flax', 'torch')) -> dict:
  info = {'platform': platform.platform(), 'processor': platform.processor(),
          'python': platform.python_version(), 'cpu_count': os.cpu_count(), 'cpu': cpu_model()}
  try:
    import psutil  # pylint: disable=g-import-not-at-top
    info['memory_gib'] = round(psutil.virtual_memory().total / 2**30, 1)
  except ImportError:
    pass
  info['loadavg_start'] = os.getloadavg()
  for module in modules:
    try:
      info[f'{module}_version'] = __import__(module).__version__
    except ImportError:
      info[f'{module}_version'] = None
  return info


def command_line() -> str:
  """How this run was started, as a command a reader can copy."""
  script = os.path.relpath(workers_lib.SCRIPT, workers_lib.REPO)
  return 'python ' + ' '.join(shlex.quote(a) for a in [script] + sys.argv[1:])


def run_workers(configs: Sequence[Config], batch: int, steps: int, warmup: int,
                matmul_size: int, gap_s: float, log: Callable[[str], None],
                extra: dict | None = None) -> tuple[dict, dict, dict]:
  """Starts one worker per configuration, runs the rounds: (infos, timed steps, ends)."""
  workers, infos = {}, {}
  try:
    for config in configs:
      log(f'batch {batch}: starting {config.name} ({config.label})')
      workers[config.name] = workers_lib.SubprocessWorker(config, batch, warmup, matmul_size,
                                                          extra=extra)
      infos[config.name] = workers[config.name].start()
      log(f'  ready: compile {infos[config.name].get("compile_s")}, first step '
          f'{infos[config.name]["first_step_s"]:.2f} s')
    timed = run_rounds(workers, steps, gap_s, log)
    ends = {name: w.finish() for name, w in workers.items()}
  finally:
    for w in workers.values():
      w.kill()
  return infos, timed, ends


def _without_torch(configs: Sequence[Config], notes: list[str], log) -> list[Config]:
  if configs_lib.torch_available():
    return list(configs)
  dropped = [c.name for c in configs if c.kind in ('torch', 'matmul_torch')]
  if dropped:
    notes.append(f'torch is not installed (the `compare` extra): skipped {", ".join(dropped)}.')
    log('NOTE: ' + notes[-1])
  return [c for c in configs if c.kind not in ('torch', 'matmul_torch')]


def _with_ceilings(results: list[dict], batch: int) -> None:
  ceilings = [r['gflops'] for r in results
              if r['batch'] == batch and r['kind'].startswith('matmul')]
  for r in results:
    if r['batch'] == batch and ceilings:
      r['ceiling_gflops'] = max(ceilings)
      if not r['kind'].startswith('matmul'):
        r['fraction_of_ceiling'] = r['gflops'] / max(ceilings)


def run_benchmark(configs: Sequence[Config], batch_sizes: Sequence[int], steps: int,
                  warmup: int, matmul_size: int, gap_s: float = 0.2,
                  log: Callable[[str], None] = print,
                  image_size: int = flops_lib.IMAGE_SIZE) -> dict:
  """Every configuration at every batch size; batch sizes one after another (memory)."""
  results, notes = [], []
  configs = _without_torch(configs, notes, log)
  meta = machine_info()
  flops_by_batch = {}
  for batch in batch_sizes:
    flops = flops_lib.analytic_flops(batch, image_size=image_size)
    if any(c.kind == 'jax' for c in configs):
      log(f'batch {batch}: XLA\'s FLOP count of the step')
      flops['xla_step'] = flops_lib.xla_step_flops_subprocess(batch, image_size)
      flops['xla_step_per_image'] = flops['xla_step'] / batch
    flops_by_batch[str(batch)] = flops
    infos, timed, ends = run_workers(configs, batch, steps, warmup, matmul_size, gap_s, log,
                                     extra={'image_size': image_size})
    results += [summarize(c, batch, infos[c.name], timed[c.name], ends[c.name], flops)
                for c in configs]
    _with_ceilings(results, batch)
  meta['loadavg_end'] = os.getloadavg()
  return {
      'benchmark': 'alexnet_jax train step vs PyTorch twin',
      'date': datetime.datetime.now().isoformat(timespec='seconds'),
      'command': command_line(),
      'machine': meta,
      'settings': {'batch_sizes': list(batch_sizes), 'timed_steps': steps, 'warmup_steps': warmup,
                   'matmul_size': matmul_size, 'gap_s': gap_s, 'dtype': 'float32',
                   'image_size': image_size,
                   'alternation': 'one worker process per configuration; round-robin, one step '
                                  'per configuration per round, order rotated each round'},
      'flops': flops_by_batch,
      'notes': notes,
      'results': results,
  }
