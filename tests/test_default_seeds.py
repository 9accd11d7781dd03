"""experiments/default_seeds.py: runs the main job once per seed, one after another, and
tabulates what each run's metrics.jsonl says, tested with the tiny run cut to one epoch and two
seeds (the table of several epochs and of a failed run: on rows written here)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import tiny_config

SCRIPT = os.path.join(tiny_config.REPO, 'experiments', 'default_seeds.py')
# One epoch of the tiny run, checkpointed once at its end: the script's logic needs no more, and
# each run's steps and checkpoint writes are what made this test slow.
EPOCHS = 1
MAIN_FLAGS = (f'--config.num_epochs={EPOCHS}',
              f'--config.checkpoint.every_steps={tiny_config.STEPS_PER_EPOCH}')


def _script(session, runs_dir, out_dir, seeds=('0', '1'), timeout=900):
  cmd = [sys.executable, SCRIPT, '--seeds', *seeds, '--config', tiny_config.CONFIG_PATH,
         '--runs-dir', str(runs_dir), '--json', str(out_dir / 'seeds.json'),
         '--markdown', str(out_dir / 'seeds.md'), '--',
         f'--config.data.folder={session.folder}', *MAIN_FLAGS]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=tiny_config.REPO,
                        env=session.env(), timeout=timeout, check=False)


def _eval_records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if r['event'] == 'eval']


@pytest.mark.slow
def test_two_seeds_run_one_after_another_and_are_tabulated(tmp_path_factory, tmp_path):
  session = tiny_config.session(tmp_path_factory)
  runs_dir = tmp_path / 'runs'
  proc = _script(session, runs_dir, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = json.loads((tmp_path / 'seeds.json').read_text())
  assert [r['seed'] for r in data['rows']] == [0, 1]
  for row in data['rows']:
    assert row['returncode'] == 0 and row['wall_s'] > 0
    with open(os.path.join(row['workdir'], 'config.json'), encoding='utf-8') as f:
      assert json.load(f)['seed'] == row['seed']
    evals = _eval_records(row['workdir'])
    assert [e['epoch'] for e in row['evals']] == [e['epoch'] for e in evals]
    assert len(row['evals']) == EPOCHS
    for got, want in zip(row['evals'], evals):
      assert got['val_top1_error'] == want['val_top1_error']
      assert got['val_top5_error'] == want['val_top5_error']
    assert row['final_top1_accuracy'] == 1 - evals[-1]['val_top1_error']
  # One after another: every record of the second run is later than every one of the first.
  first, second = (_eval_records(r['workdir']) for r in data['rows'])
  assert min(r['wall_time'] for r in second) > max(r['wall_time'] for r in first)
  summary = data['summary']
  assert summary['seeds'] == summary['finished'] == 2
  accuracies = [r['final_top1_accuracy'] for r in data['rows']]
  assert summary['spread_points'] == pytest.approx(100 * (max(accuracies) - min(accuracies)))
  table = (tmp_path / 'seeds.md').read_text()
  assert table.strip() in proc.stdout
  assert '| 0 |' in table and '| 1 |' in table and 'Criteria:' in table
  assert data['machine']['cpu_count'] >= 1 and data['machine']['jax_version']

  # A second invocation on the same runs directory would resume those runs: refused, untouched.
  before = (runs_dir / 'seed_0' / 'metrics.jsonl').read_text()
  again = _script(session, runs_dir, tmp_path / 'again', seeds=('0',), timeout=60)
  assert again.returncode == 2
  assert again.stderr.strip().startswith('error:') and 'seed_0' in again.stderr
  assert (runs_dir / 'seed_0' / 'metrics.jsonl').read_text() == before


def _default_seeds_module():
  spec = importlib.util.spec_from_file_location('default_seeds', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_table_of_several_epochs_and_a_failed_run():
  """A column per epoch; a run that stopped early is padded and marked failed, and fails the
  criteria (the end-to-end test above runs one epoch per seed)."""
  seeds = _default_seeds_module()
  evals = [{'epoch': 1, 'step': 4, 'val_top1_error': 0.25, 'val_top5_error': 0.0},
           {'epoch': 2, 'step': 8, 'val_top1_error': 0.125, 'val_top5_error': 0.0}]
  rows = [{'seed': 0, 'returncode': 0, 'wall_s': 61.5, 'evals': evals, 'log': 'a.log',
           'final_top1_accuracy': 0.875},
          {'seed': 1, 'returncode': 1, 'wall_s': 30.0, 'evals': evals[:1], 'log': 'b.log'}]
  summary = seeds.summary(rows, min_top1=0.85, max_spread_points=5.0, max_minutes=8.0)
  assert summary['seeds'] == 2 and summary['finished'] == 1
  assert summary['criteria'] == {'every seed >= 85% top-1': False, 'spread <= 5 points': True,
                                 'wall time <= 8 min': True}
  table = seeds.markdown({'config': 'c.py', 'command': 'cmd', 'date': 'd', 'rows': rows,
                          'summary': summary, 'machine': {'cpu': 'cpu', 'cpu_count': 2}})
  assert '| seed | wall time | epoch 1 top-1 / top-5 error | epoch 2 top-1 / top-5 error |' \
      in table
  assert '| 0 | 1 min 01.5 s | 25.0% / 0.0% | 12.5% / 0.0% | 87.5% |' in table
  assert '| 1 | 0 min 30.0 s | 25.0% / 0.0% | - | failed (exit 1, log b.log) |' in table
  assert 'every seed >= 85% top-1: NOT met' in table
