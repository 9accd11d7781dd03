"""The main job end to end (issue 4): ``python -m alexnet_jax.main`` on a tiny config.

The tiny run (``tiny_config``: the full AlexNet at its smallest input, 67x67, 2 fake CPU
devices, batch 4, two epochs of 4 steps on a small image folder) writes checkpoints, metrics.jsonl, TensorBoard
events, both plots and its config; a second invocation resumes where the first stopped;
``--mode=eval`` reports centre-crop and 10-crop errors of a checkpoint; a workdir refuses a
config of another network.
"""
import json
import math
import os
import re
import shutil

import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

import tiny_config as tiny

TRACEBACK = 'Traceback (most recent call last)'


def _records(workdir, event):
  return [r for r in tiny.read_metrics(workdir) if r['event'] == event]


@pytest.fixture(scope='module')
def continued_runs(tiny_session, tiny_reference):
  """The three command lines that continue the reference run, each a process of its own forked
  from one that imported JAX and TensorFlow once (tiny_config.Session.run_forked): a resume
  for one more epoch in a copy of the workdir, ``--mode=eval`` of the workdir and the same
  command on a 3-class folder. What the tests compare with is read before any of them runs."""
  ref_dir, _ = tiny_reference
  resumed = tiny.copy_workdir(ref_dir, os.path.join(tiny_session.new_dir('resume'), 'run'))
  folder = os.path.join(tiny_session.new_dir('three_classes'), 'images')
  shutil.copytree(tiny_session.folder, folder)
  for split in ('train', 'val'):
    shutil.copytree(os.path.join(folder, split, 'class1'), os.path.join(folder, split, 'class2'))
  with open(os.path.join(ref_dir, 'config.json'), encoding='utf-8') as f:
    before = {'listing': sorted(os.listdir(ref_dir)), 'config': f.read(),
              'steps': tiny.checkpoint_steps(ref_dir)}
  resume, evaluation, refused = tiny_session.run_forked([
      tiny_session.command(resumed, '--config.num_epochs=3'),
      tiny_session.command(ref_dir, '--mode=eval'),
      tiny_session.command(ref_dir, f'--config.data.folder={folder}'),
  ], timeout=900)
  return {'before': before, 'resume': (resumed, resume), 'eval': evaluation, 'refused': refused}


@pytest.mark.timeout(600)
def test_run_writes_checkpoints_metrics_tensorboard_plots_and_config(tiny_reference):
  workdir, result = tiny_reference
  assert result.returncode == 0, result
  assert TRACEBACK not in result.output
  assert f'Done: {tiny.TOTAL_STEPS} steps.' in result.stdout

  # Checkpoints: complete step directories (state and meta), the last one at the last step.
  steps = tiny.checkpoint_steps(workdir)
  assert steps and steps[-1] == tiny.TOTAL_STEPS
  names = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert sorted(names) == sorted(str(s) for s in steps)  # no temporary leftovers
  for step in steps:
    assert {'state', 'meta'} <= set(os.listdir(os.path.join(workdir, 'checkpoints', str(step))))
  state, meta = tiny.restore_checkpoint(workdir, tiny.TOTAL_STEPS)
  assert int(state['step']) == tiny.TOTAL_STEPS
  assert (meta['epoch'], meta['step_in_epoch']) == (tiny.NUM_EPOCHS, 0)
  assert state['params']['fc8']['kernel'].shape == (4096, tiny.NUM_CLASSES)

  # metrics.jsonl: one JSON object per line; a train line per step (log every step), an eval
  # line per epoch, errors as fractions.
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    lines = [json.loads(line) for line in f]
  assert all(isinstance(r, dict) for r in lines)
  train, evals = _records(workdir, 'train'), _records(workdir, 'eval')
  assert len(train) + len(evals) == len(lines)
  assert [r['step'] for r in train] == list(range(1, tiny.TOTAL_STEPS + 1))
  for r in train:
    assert {'step', 'epoch', 'lr', 'train_loss'} <= set(r)
    assert r['epoch'] == pytest.approx(r['step'] / tiny.STEPS_PER_EPOCH)
    # The steps policy divides the rate by 10 after the first epoch.
    assert r['lr'] == pytest.approx(0.01 if r['step'] <= tiny.STEPS_PER_EPOCH else 0.001)
    assert math.isfinite(r['train_loss']) and r['train_loss'] > 0
  assert [r['step'] for r in evals] == [tiny.STEPS_PER_EPOCH * (e + 1)
                                        for e in range(tiny.NUM_EPOCHS)]
  previous = 0
  for r in evals:
    assert {'step', 'epoch', 'lr', 'train_loss', 'val_top1_error', 'val_top5_error'} <= set(r)
    for key in ('val_top1_error', 'val_top5_error'):
      # Fractions of the 4 validation images.
      assert 0.0 <= r[key] <= 1.0 and (r[key] * 4) == round(r[key] * 4)
    assert r['val_top5_error'] <= r['val_top1_error']
    # The eval line's train loss is the mean over the steps since the previous eval.
    window = [t['train_loss'] for t in train if previous < t['step'] <= r['step']]
    assert r['train_loss'] == pytest.approx(sum(window) / len(window), rel=1e-9)
    previous = r['step']

  # TensorBoard: the same scalars, readable by TensorBoard itself.
  events = os.listdir(os.path.join(workdir, 'tensorboard'))
  assert events and all(name.startswith('events.out.tfevents.') for name in events)
  accumulator = event_accumulator.EventAccumulator(os.path.join(workdir, 'tensorboard'))
  accumulator.Reload()
  assert {'train_loss', 'lr', 'val_top1_error', 'val_top5_error'} <= set(
      accumulator.Tags()['scalars'])
  charted = {e.step: e.value for e in accumulator.Scalars('train_loss')}
  assert charted == pytest.approx({r['step']: r['train_loss'] for r in train}, rel=1e-6)
  assert [e.step for e in accumulator.Scalars('val_top1_error')] == [r['step'] for r in evals]

  # Both plots, as PNG images.
  for name in ('curves.png', 'conv1_filters.png'):
    path = os.path.join(workdir, 'plots', name)
    with Image.open(path) as image:
      assert image.format == 'PNG' and image.width > 100 and image.height > 100

  # The config, saved with the class count taken from the folder.
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    saved = json.load(f)
  assert saved['model']['num_classes'] == tiny.NUM_CLASSES
  assert saved['batch_size'] == 4 and saved['data']['source'] == 'folder'
  assert saved['checkpoint']['every_steps'] == tiny.CHECKPOINT_EVERY
  # What makes the numbers what they are beyond the config (issue 16): machine, versions, the
  # implementations 'auto' resolved to.
  import jax  # pylint: disable=g-import-not-at-top
  run = saved['run']
  assert run['versions']['jax'] == jax.__version__ and run['backend'] == 'cpu'
  assert run['cpu'] and run['device_count'] == 2
  assert set(run['model_impls']) >= {'pool_impl', 'conv_impl', 'conv1_impl'}
  assert 'auto' not in run['model_impls'].values()


@pytest.mark.timeout(600)
def test_a_second_invocation_resumes_from_the_step_the_first_reached(tiny_reference,
                                                                     continued_runs):
  """The finished reference run, continued for one more epoch in a copy of its workdir."""
  ref_dir, _ = tiny_reference
  workdir, result = continued_runs['resume']
  assert result.returncode == 0, result
  assert TRACEBACK not in result.output
  assert (f'Resuming from checkpoint at step {tiny.TOTAL_STEPS} (epoch {tiny.NUM_EPOCHS}, step 0 '
          'of the epoch)') in result.stdout
  total = tiny.TOTAL_STEPS + tiny.STEPS_PER_EPOCH
  assert f'Done: {total} steps.' in result.stdout

  train = _records(workdir, 'train')
  assert [r['step'] for r in train] == list(range(1, total + 1))  # each step once
  kept = [r for r in train if r['step'] <= tiny.TOTAL_STEPS]
  assert kept == _records(ref_dir, 'train')  # the first run's lines are left as they were
  assert [r['step'] for r in _records(workdir, 'eval')] == [4, 8, 12]
  assert tiny.checkpoint_steps(workdir)[-1] == total
  state, meta = tiny.restore_checkpoint(workdir, total)
  assert int(state['step']) == total and meta['epoch'] == 3
  # The resumed session wrote its own TensorBoard file next to the first one.
  assert len(os.listdir(os.path.join(workdir, 'tensorboard'))) == 2


@pytest.mark.timeout(600)
def test_eval_mode_reports_centre_and_ten_crop_errors_of_the_best_checkpoint(
    tiny_reference, continued_runs):
  ref_dir, _ = tiny_reference
  before = continued_runs['before']['listing']
  result = continued_runs['eval']
  assert result.returncode == 0, result
  assert TRACEBACK not in result.output
  pattern = (r'checkpoint step (\d+) \((best|latest)\), (centre crop|ten crop): top-1 error '
             r'([\d.]+)%, top-5 error ([\d.]+)% on 4 validation images')
  found = re.findall(pattern, result.stdout)
  assert [f[2] for f in found] == ['centre crop', 'ten crop'], result
  step = int(found[0][0])
  assert found[0][1] == 'best' and int(found[1][0]) == step

  # The best kept checkpoint by the validation errors logged during training (ties: earliest).
  evals = {r['step']: r for r in _records(ref_dir, 'eval')}
  candidates = [s for s in tiny.checkpoint_steps(ref_dir) if s in evals]
  best = min(candidates, key=lambda s: (evals[s]['val_top1_error'], s))
  assert step == best
  # Centre crop is what training evaluated: the same numbers.
  assert float(found[0][3]) == pytest.approx(100 * evals[step]['val_top1_error'], abs=0.005)
  assert float(found[0][4]) == pytest.approx(100 * evals[step]['val_top5_error'], abs=0.005)
  for f in found:  # errors over 4 images
    assert float(f[3]) in (0.0, 25.0, 50.0, 75.0, 100.0)
  assert sorted(os.listdir(ref_dir)) == before  # evaluation writes nothing


@pytest.mark.timeout(600)
def test_a_config_of_another_network_is_refused_naming_the_difference(tiny_reference,
                                                                      continued_runs):
  """The workdir's run has 2 classes; the same command on a 3-class folder must not touch it."""
  ref_dir, _ = tiny_reference
  config_before = continued_runs['before']['config']
  steps_before = continued_runs['before']['steps']
  result = continued_runs['refused']
  assert result.returncode == 2, result
  assert TRACEBACK not in result.output
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, result
  assert re.fullmatch(r'error: The workdir \S+ holds checkpoints of a different network \('
                      r'model\.num_classes is 2 there but 3 now\); use another --workdir or the '
                      r'same config\.', errors[0]), errors[0]
  assert open(os.path.join(ref_dir, 'config.json'), encoding='utf-8').read() == config_before
  assert tiny.checkpoint_steps(ref_dir) == steps_before


def test_stderr_filter_drops_event_loop_tracebacks_but_not_other_threads_lines():
  """Tensorstore's 'Event loop is closed' tracebacks (written line by line from its threads)
  are dropped; the job's own error line, written meanwhile from another thread, is kept."""
  import io
  import threading

  from alexnet_jax import main as main_lib

  out = io.StringIO()
  stream = main_lib._StderrFilter(out)  # pylint: disable=protected-access
  started, resume = threading.Event(), threading.Event()

  def tensorstore_thread():
    stream.write('Traceback (most recent call last):\n')
    stream.write('  File "base_events.py", line 806, in call_soon_threadsafe\n')
    started.set()
    resume.wait(5)
    stream.write('    self._check_closed()\n')
    stream.write('RuntimeError: Event loop is closed\n')

  worker = threading.Thread(target=tensorstore_thread)
  worker.start()
  started.wait(5)
  stream.write('error: Could not write the checkpoint of step 10')
  stream.write('\n')
  resume.set()
  worker.join(5)
  stream.write('Traceback (most recent call last):\n  File "x.py", line 1, in f\nValueError: kept\n')
  assert out.getvalue() == ('error: Could not write the checkpoint of step 10\n'
                            'Traceback (most recent call last):\n  File "x.py", line 1, in f\n'
                            'ValueError: kept\n')


@pytest.mark.parametrize('env,expected', [
    ({}, False),
    ({'SLURM_JOB_ID': '1', 'SLURM_NTASKS': '4'}, False),  # sbatch without srun: no step
    ({'SLURM_STEP_ID': '0', 'SLURM_STEP_NUM_TASKS': '1', 'SLURM_NTASKS': '4'}, False),
    ({'SLURM_STEP_ID': '0', 'SLURM_STEP_NUM_TASKS': '2'}, True),
    ({'SLURM_STEP_ID': '0', 'SLURM_NTASKS': '2'}, True),
    ({'OMPI_COMM_WORLD_SIZE': '1'}, False),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'host0'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'host0,host1'}, True),
])
def test_launcher_detection_needs_several_processes(monkeypatch, env, expected):
  from alexnet_jax import main as main_lib
  for name in ('SLURM_JOB_ID', 'SLURM_STEP_ID', 'SLURM_STEP_NUM_TASKS', 'SLURM_NTASKS',
               'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert main_lib._launched_as_multiprocess_job() is expected  # pylint: disable=protected-access


@pytest.mark.parametrize('error, code, text', [
    (ValueError('the batch is wrong; do this.'), 2, 'error: the batch is wrong; do this.\n'),
    (TypeError("unsupported operand type(s) for +: 'int' and 'str'"), 1,
     "error: TypeError: unsupported operand type(s) for +: 'int' and 'str' (at "),
    (KeyError('epoch'), 1, "error: KeyError: 'epoch' (at "),
])
@pytest.mark.parametrize('traceback_env', [False, True])
def test_user_errors_exit_2_programming_errors_exit_1_with_or_without_the_traceback(
    monkeypatch, capsys, error, code, text, traceback_env):
  """A TypeError or KeyError raised by our code is a programming error (exit 1, with where it
  happened), not a one-line user error; ALEXNET_JAX_TRACEBACK=1 adds the traceback and keeps
  the exit status."""
  from alexnet_jax import main as main_lib

  def fail(*args, **kwargs):
    raise error

  monkeypatch.setattr(main_lib.app, 'run', fail)
  if traceback_env:
    monkeypatch.setenv('ALEXNET_JAX_TRACEBACK', '1')
  else:
    monkeypatch.delenv('ALEXNET_JAX_TRACEBACK', raising=False)
  with pytest.raises(SystemExit) as raised:
    main_lib.run()
  assert raised.value.code == code
  err = capsys.readouterr().err
  assert text in err
  assert (TRACEBACK in err) == traceback_env
