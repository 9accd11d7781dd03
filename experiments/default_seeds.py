"""The default run over several seeds: does the recipe hold whatever the seed (issue 16)?

    python experiments/default_seeds.py --seeds 0 1 2 3 4 --readme README.md

runs ``python -m alexnet_jax.main --config=alexnet_jax/configs/default.py
--workdir=<runs-dir>/seed_<N> --config.seed=<N>`` for each seed, one after another (never two
at once: each run takes the whole machine and its wall time is part of the result), then writes
a table: per seed the wall time and the validation top-1 / top-5 errors after every epoch (read
from the run's metrics.jsonl), the final top-1 accuracy, and the summary the issue asks for
(every seed at least ``--min-top1`` accuracy, spread at most ``--max-spread`` points, wall time
at most ``--max-minutes``), with the CPU model and library versions it ran on.

The first run prepares the embedded dataset if it is not prepared yet: its wall time then
includes the preparation (run the main job once before to time training alone).

Flags after ``--`` go to every run of the main job (e.g. ``-- --config.num_epochs=2``).
Output: markdown on stdout and in ``--markdown``, every number in ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from alexnet_jax import report  # noqa: E402  (after the path above)
from experiments.bench import report as bench_report  # noqa: E402
from experiments.bench import steps as bench_steps  # noqa: E402
from experiments.bench.configs import user_error  # noqa: E402

DEFAULT_CONFIG = os.path.join('alexnet_jax', 'configs', 'default.py')
RESULTS = os.path.join(REPO, 'experiments', 'results')
README_START = '<!-- default-seeds:start -->'
README_END = '<!-- default-seeds:end -->'


def main_command(config: str, workdir: str, seed: int, extra: list[str]) -> list[str]:
  """The main job's command line for one seed."""
  return [sys.executable, '-m', 'alexnet_jax.main', f'--config={config}', f'--workdir={workdir}',
          f'--config.seed={seed}', *extra]


def epoch_errors(workdir: str) -> list[dict]:
  """The validation errors after each epoch, from the run's metrics.jsonl (the last record of
  an epoch if there are several), in epoch order."""
  by_epoch = {}
  for record in report.read_metrics(workdir):
    if record.get('event') == 'eval' and 'val_top1_error' in record:
      by_epoch[record['epoch']] = {'epoch': record['epoch'], 'step': record['step'],
                                   'val_top1_error': record['val_top1_error'],
                                   'val_top5_error': record['val_top5_error']}
  return [by_epoch[e] for e in sorted(by_epoch)]


def run_seed(config: str, runs_dir: str, seed: int, extra: list[str], log=print) -> dict:
  """Runs the main job for one seed (output into <workdir>.log); its row of the table."""
  workdir = os.path.join(runs_dir, f'seed_{seed}')
  command = main_command(config, workdir, seed, extra)
  env = dict(os.environ)
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  log(f'seed {seed}: {shlex.join(command)}')
  start = time.perf_counter()
  with open(workdir + '.log', 'wb') as out:
    returncode = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                check=False).returncode
  wall_s = time.perf_counter() - start
  evals = epoch_errors(workdir)
  row = {'seed': seed, 'workdir': workdir, 'returncode': returncode, 'wall_s': wall_s,
         'evals': evals, 'log': workdir + '.log'}
  if evals:
    row['final_top1_accuracy'] = 1.0 - evals[-1]['val_top1_error']
    row['final_top5_accuracy'] = 1.0 - evals[-1]['val_top5_error']
  log(f'seed {seed}: exit {returncode}, {wall_s:.1f} s, '
      f'final top-1 accuracy {row.get("final_top1_accuracy", float("nan")):.4f}')
  return row


def summary(rows: list[dict], min_top1: float, max_spread_points: float,
            max_minutes: float) -> dict:
  """The issue's criteria over the seeds: every run finished and met them, or which did not."""
  finished = [r for r in rows if r['returncode'] == 0 and 'final_top1_accuracy' in r]
  accuracies = [r['final_top1_accuracy'] for r in finished]
  out = {'seeds': len(rows), 'finished': len(finished)}
  if accuracies:
    out.update({'mean_top1_accuracy': statistics.mean(accuracies),
                'min_top1_accuracy': min(accuracies), 'max_top1_accuracy': max(accuracies),
                'spread_points': 100 * (max(accuracies) - min(accuracies)),
                'max_wall_s': max(r['wall_s'] for r in finished)})
  every = bool(accuracies) and len(finished) == len(rows)
  out['criteria'] = {
      f'every seed >= {100 * min_top1:g}% top-1': every and min(accuracies) >= min_top1,
      # Over the runs that finished (a failed run already fails the first criterion).
      f'spread <= {max_spread_points:g} points':
          bool(accuracies) and out['spread_points'] <= max_spread_points,
      f'wall time <= {max_minutes:g} min':
          bool(accuracies) and out['max_wall_s'] <= 60 * max_minutes}
  return out


def _minutes(seconds: float) -> str:
  return f'{int(seconds // 60)} min {seconds % 60:04.1f} s'


def _seed_table(rows: list[dict]) -> list[str]:
  epochs = max((len(r['evals']) for r in rows), default=0)
  epoch_columns = ' | '.join(f'epoch {e + 1} top-1 / top-5 error' for e in range(epochs))
  lines = [f'| seed | wall time | {epoch_columns} | final top-1 accuracy |',
           '|---|---|' + '---|' * epochs + '---|']
  for r in rows:
    cells = [f'{100 * e["val_top1_error"]:.1f}% / {100 * e["val_top5_error"]:.1f}%'
             for e in r['evals']] + ['-'] * (epochs - len(r['evals']))
    final = (f'{100 * r["final_top1_accuracy"]:.1f}%' if 'final_top1_accuracy' in r
             else f'failed (exit {r["returncode"]}, log {r["log"]})')
    lines.append(f'| {r["seed"]} | {_minutes(r["wall_s"])} | ' + ' | '.join(cells) +
                 f' | {final} |')
  return lines


def markdown(data: dict) -> str:
  s, m = data['summary'], data['machine']
  seeds = ', '.join(str(r['seed']) for r in data['rows'])
  lines = [f'The default run (`{data["config"]}`) for seeds {seeds}, one after another; '
           f'validation errors on the embedded validation split after each epoch.', '',
           f'Command: `{data["command"]}` ({data["date"]})', '',
           f'Machine: {m["cpu"] or m["processor"]}, {m["cpu_count"]} cores; jax '
           f'{m.get("jax_version")}, jaxlib {m.get("jaxlib_version")}.', '']
  lines += _seed_table(data['rows']) + ['']
  if 'mean_top1_accuracy' in s:
    lines.append(f'Top-1 accuracy: mean {100 * s["mean_top1_accuracy"]:.1f}%, min '
                 f'{100 * s["min_top1_accuracy"]:.1f}%, max {100 * s["max_top1_accuracy"]:.1f}% '
                 f'(spread {s["spread_points"]:.1f} points); longest run '
                 f'{_minutes(s["max_wall_s"])}.')
  lines.append('Criteria: ' + '; '.join(f'{name}: {"met" if ok else "NOT met"}'
                                        for name, ok in s['criteria'].items()) + '.')
  return '\n'.join(lines) + '\n'


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2, 3, 4])
  p.add_argument('--config', default=DEFAULT_CONFIG, help='the main job\'s --config')
  p.add_argument('--runs-dir', default=os.path.join('runs', 'default_seeds'),
                 help='one workdir per seed under it (must not hold those workdirs yet)')
  p.add_argument('--json', default=os.path.join(RESULTS, 'default_seeds.json'))
  p.add_argument('--markdown', default=os.path.join(RESULTS, 'default_seeds.md'))
  p.add_argument('--readme', default=None,
                 help=f'update the {README_START} section of this file with the table')
  p.add_argument('--min-top1', type=float, default=0.85, help='criterion: top-1 accuracy')
  p.add_argument('--max-spread', type=float, default=5.0, help='criterion: points of top-1')
  p.add_argument('--max-minutes', type=float, default=8.0, help='criterion: wall time per run')
  p.add_argument('main_flags', nargs='*', help='after --: flags for every run of the main job')
  return p.parse_args(argv)


def _check_runs_dir(runs_dir: str, seeds) -> None:
  taken = [s for s in seeds if os.path.exists(os.path.join(runs_dir, f'seed_{s}'))]
  if taken:
    user_error(f'{runs_dir} already holds seed_{taken[0]}: a run there would resume, not '
               'start afresh; remove it or pass another --runs-dir.')
  os.makedirs(runs_dir, exist_ok=True)


def main(argv=None) -> dict:
  args = parse_args(argv)
  runs_dir = os.path.abspath(args.runs_dir)
  bench_report.check_readme(args.readme, README_START, README_END)
  _check_runs_dir(runs_dir, args.seeds)
  log = lambda m: print(m, file=sys.stderr, flush=True)
  machine = bench_steps.machine_info(('jax', 'jaxlib', 'flax'))
  rows = [run_seed(args.config, runs_dir, seed, args.main_flags, log) for seed in args.seeds]
  machine['loadavg_end'] = os.getloadavg()
  data = {'config': args.config, 'main_flags': args.main_flags,
          'date': datetime.datetime.now().isoformat(timespec='seconds'),
          'command': 'python ' + shlex.join([os.path.relpath(__file__, REPO)] +
                                            (sys.argv[1:] if argv is None else list(argv))),
          'machine': {**machine, 'python': platform.python_version()}, 'rows': rows,
          'summary': summary(rows, args.min_top1, args.max_spread, args.max_minutes)}
  table = markdown(data)
  print(table)
  write_results(data, table, args)
  return data


def write_results(data: dict, table: str, args) -> None:
  bench_report.write_outputs(data, table, args.json, args.markdown)
  if args.readme:
    bench_report.update_readme(args.readme, table, README_START, README_END)


if __name__ == '__main__':
  data_ = main()
  sys.exit(0 if data_['summary']['finished'] == data_['summary']['seeds'] else 1)
