"""Tests of alexnet_jax.report: metrics.jsonl, TensorBoard events, console lines, plots."""

import json
import os
import time
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import report


def _write_run(workdir, steps=(10, 20, 30, 40), eval_every=20, **kwargs):
  with report.MetricsWriter(workdir, **kwargs) as writer:
    for step in steps:
      epoch = step / 20
      writer.write_train(step, epoch, lr=0.01, train_loss=np.float32(6.9 - step / 100),
                         images_per_sec=123.0)
      if step % eval_every == 0:
        writer.write_eval(step, epoch, lr=0.01, train_loss=6.9 - step / 100,
                          val_top1_error=1.0 - step / 100, val_top5_error=0.9 - step / 100)


def _lines(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return f.read().splitlines()


def test_metrics_lines_parse_and_have_keys(tmp_path):
  _write_run(tmp_path)
  records = [json.loads(line) for line in _lines(tmp_path)]
  assert [(r['event'], r['step']) for r in records] == [
      ('train', 10), ('train', 20), ('eval', 20), ('train', 30), ('train', 40), ('eval', 40)]
  for r in records:
    assert {'event', 'step', 'epoch', 'lr', 'train_loss', 'wall_time'} <= r.keys()
  evals = [r for r in records if r['event'] == 'eval']
  assert evals[0]['val_top1_error'] == pytest.approx(0.8)
  assert evals[1]['val_top5_error'] == pytest.approx(0.5)
  assert isinstance(records[0]['train_loss'], float)  # numpy scalars were made plain.
  assert report.read_metrics(tmp_path) == records


def test_truncated_last_line_is_tolerated_and_cleaned_on_append(tmp_path):
  _write_run(tmp_path, steps=(10, 20))
  with open(tmp_path / 'metrics.jsonl', 'a', encoding='utf-8') as f:
    f.write('{"event": "train", "step": 30, "ep')  # A process killed mid-write.
  assert [r['step'] for r in report.read_metrics(tmp_path)] == [10, 20, 20]
  _write_run(tmp_path, steps=(30,))  # Resumed without a resume step: appends after a cleanup.
  records = [json.loads(line) for line in _lines(tmp_path)]  # Every line parses.
  assert [r['step'] for r in records] == [10, 20, 20, 30]


def test_resume_step_drops_later_lines(tmp_path):
  _write_run(tmp_path, steps=(10, 20, 30, 40))
  assert [r['step'] for r in report.read_metrics(tmp_path, max_step=25)] == [10, 20, 20]
  # Restarting from the checkpoint of step 20: what steps 30 and 40 wrote goes away.
  _write_run(tmp_path, steps=(30,), resume_step=20)
  records = report.read_metrics(tmp_path)
  assert [(r['event'], r['step']) for r in records] == [
      ('train', 10), ('train', 20), ('eval', 20), ('train', 30)]


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  _write_run(workdir, enabled=False)
  assert not workdir.exists()
  pre = tmp_path / 'existing'
  _write_run(pre, steps=(10,))
  before = sorted(p.name for p in pre.rglob('*'))
  _write_run(pre, steps=(20,), enabled=False, resume_step=0)
  assert sorted(p.name for p in pre.rglob('*')) == before
  assert [r['step'] for r in report.read_metrics(pre)] == [10]


def test_report_does_not_import_tensorflow(tmp_path):
  code = (f'import sys; from alexnet_jax import report; '
          f'w = report.MetricsWriter({str(tmp_path)!r}); w.write_train(1, 0.1, 0.01, 6.9); '
          f'w.close(); assert "tensorflow" not in sys.modules, "TF imported"')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=60)


def _scalars(logdir):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(logdir), purge_orphaned_data=True)
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def test_tensorboard_event_files_hold_the_scalars(tmp_path):
  _write_run(tmp_path)
  files = list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  assert len(files) == 1
  scalars = _scalars(tmp_path / 'tensorboard')
  assert {'train_loss', 'lr', 'images_per_sec', 'val_top1_error', 'val_top5_error'} <= set(scalars)
  assert [s for s, _ in scalars['train_loss']] == [10, 20, 30, 40]  # Not repeated by evals.
  np.testing.assert_allclose([v for _, v in scalars['val_top1_error']], [0.8, 0.6], rtol=1e-6)
  np.testing.assert_allclose([v for _, v in scalars['train_loss']],
                             [6.8, 6.7, 6.6, 6.5], rtol=1e-6)


def test_tensorboard_hides_steps_after_resume_point(tmp_path):
  _write_run(tmp_path, steps=(10, 20, 30, 40))
  _write_run(tmp_path, steps=(30,), resume_step=20)
  assert len(list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))) == 2
  scalars = _scalars(tmp_path / 'tensorboard')
  assert [s for s, _ in scalars['train_loss']] == [10, 20, 30]
  assert [s for s, _ in scalars['val_top1_error']] == [20]


def test_format_eval_summary():
  line = report.format_eval_summary(3, 1200, {'val_top1_error': 0.45213, 'val_top5_error': 0.2103,
                                              'train_loss': 2.34567, 'lr': 0.001})
  assert line == ('epoch 3 step 1200 | val error top-1 45.21% top-5 21.03% | '
                  'train loss 2.3457 | lr 0.001')
  assert '\n' not in line
  assert report.format_eval_summary(1, 5, {}) == 'epoch 1 step 5'


def test_epoch_progress_shows_loss_and_rate(capsys):
  progress = report.EpochProgress(epoch=2, total_steps=10, initial_step=4, enabled=True)
  progress.update(3, loss=1.23456, images_per_sec=512.4)
  progress.close()
  err = capsys.readouterr().err
  assert 'epoch 2' in err and '7/10' in err and 'loss=1.2346' in err and 'img/s=512' in err
  quiet = report.EpochProgress(epoch=2, total_steps=10, enabled=False)
  quiet.update(3, loss=1.0, images_per_sec=1.0)
  quiet.close()
  assert capsys.readouterr().err == ''


def _assert_png(path, min_size, max_size):
  with Image.open(path) as img:
    assert img.format == 'PNG'
    w, h = img.size
    assert min_size[0] <= w <= max_size[0] and min_size[1] <= h <= max_size[1], img.size
    return np.asarray(img.convert('RGB'))


def test_plot_curves_writes_png(tmp_path):
  _write_run(tmp_path, steps=range(10, 210, 10))
  path = report.plot_curves(report.read_metrics(tmp_path), tmp_path / 'plots' / 'curves.png')
  pixels = _assert_png(path, (900, 250), (2500, 800))
  assert pixels.std() > 5  # Not a blank canvas.
  # No records yet (first eval not reached): still a valid image.
  _assert_png(report.plot_curves([], tmp_path / 'empty.png'), (900, 250), (2500, 800))


def test_conv1_tiles_place_towers_in_blocks(tmp_path):
  kernel = np.zeros((11, 11, 3, 96), np.float32)
  kernel[5, 5, 2, :] = 1.0              # Every kernel: a bright blue centre...
  kernel[0, 0, 0, 0] = 3.0              # ...kernel 0 a red top-left corner,
  kernel[0, 0, 1, 48] = 3.0             # kernel 48 (tower 1's first) a green one,
  kernel[0, 0, 0, 47] = -3.0            # and kernel 47 a negative one.
  grid = report.conv1_filter_grid(kernel, towers=2, columns=16, border=1, tower_gap=4)
  rows, block_h = 3, 3 * 12 + 1
  assert grid.shape == (2 * block_h + 4, 16 * 12 + 1, 3)
  np.testing.assert_allclose(grid[1, 1], [1.0, 0.0, 0.0])             # kernel 0, top-left.
  second = block_h + 4 + 1                                            # kernel 48's top row.
  np.testing.assert_allclose(grid[second, 1], [0.0, 1.0, 0.0])
  # Kernel 47 is the last of tower 0: last column, third row of the first block.
  top47, left47 = 1 + (rows - 1) * 12, 1 + 15 * 12
  # Kernel 47 spans [-3, 1]: its own min-max maps 0 to 0.75 (the other kernels span [0, 1]).
  np.testing.assert_allclose(grid[top47, left47], [0.0, 0.75, 0.75])
  np.testing.assert_allclose(grid[top47 + 5, left47 + 5], [0.75, 0.75, 1.0])
  np.testing.assert_allclose(grid[1 + 5, 1 + 12 + 5], [0.0, 0.0, 1.0])  # Kernel 1's centre.
  assert np.all(grid[0] == 1.0) and np.all(grid[block_h:block_h + 4] == 1.0)  # White borders.

  scale = 4
  path = report.plot_conv1_filters(kernel, tmp_path / 'plots' / 'conv1.png', scale=scale)
  pixels = _assert_png(path, (16 * 12 * scale, 2 * block_h * scale), (2000, 1000))
  np.testing.assert_array_equal(pixels[scale, scale], [255, 0, 0])
  np.testing.assert_array_equal(pixels[second * scale + 2, scale + 2], [0, 255, 0])


def test_conv1_plot_rejects_wrong_shape(tmp_path):
  with pytest.raises(ValueError, match=r"params\['conv1'\]\['kernel'\]"):
    report.plot_conv1_filters(np.zeros((11, 11, 96, 3)), tmp_path / 'x.png')


def test_event_files_of_one_second_sort_in_the_order_they_were_opened(tmp_path):
  """TensorBoard reads a directory's event files in name order; resumes within one second (here
  twelve: the suffix once counted 9 < 10 as text) must still sort oldest first."""
  opened = []
  for i in range(12):
    before = set(os.listdir(tmp_path))
    writer = report._EventFile(str(tmp_path), purge_step=None)  # pylint: disable=protected-access
    writer.add_scalar('x', float(i), i, walltime=time.time())
    writer.close()
    opened += sorted(set(os.listdir(tmp_path)) - before)
  assert sorted(opened) == opened and len(set(opened)) == 12


def test_tensorboard_reads_a_resume_of_the_same_second_after_the_first_session(tmp_path,
                                                                              monkeypatch):
  """A resume within the second the first session started, in a process whose pid is smaller
  (pids wrap): TensorBoard's own reader must still read the first session first, so that the
  resumed session's step 30 replaces the first one's. A name ordered by whole seconds, then
  host and pid (tensorboard's EventFileWriter) reads the resumed file first."""
  second = 1_800_000_000 * 10**9
  clock = iter(range(second + 1, second + 10**9, 1000))
  monkeypatch.setattr(time, 'time_ns', lambda: next(clock))
  monkeypatch.setattr(os, 'getpid', lambda: 40000)
  _write_run(tmp_path, steps=(10, 20, 30, 40))
  monkeypatch.setattr(os, 'getpid', lambda: 300)
  with report.MetricsWriter(tmp_path, resume_step=20) as writer:
    writer.write_train(30, 1.5, lr=0.01, train_loss=1.25)
  assert len(list((tmp_path / 'tensorboard').iterdir())) == 2
  scalars = _scalars(tmp_path / 'tensorboard')
  assert [s for s, _ in scalars['train_loss']] == [10, 20, 30]
  np.testing.assert_allclose([v for _, v in scalars['train_loss']], [6.8, 6.7, 1.25], rtol=1e-6)
