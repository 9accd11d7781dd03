"""Stop anywhere, resume, and end where an uninterrupted run ends (issue 17).

In process, on ``tiny_config.small_config`` (the paper's network at its smallest input, two
steps per epoch): a real SIGTERM to this process right after every step k, including the last
of each epoch and of the run, during an evaluation and during a save; then a resume with the
same config. Each pair must end with the uninterrupted run's final parameters, optimizer state
and rng bit for bit, and its metrics records (every eval record exactly once). Also: what a
resume restores by value (the divided learning rate, the loss window, the plateau policy with
evaluations every 2 epochs), checkpoints of earlier versions saved on an epoch's last step,
a resume refused for each architecture field changed, and a workdir whose every checkpoint is
damaged (a stop, or a start over when asked for).
"""
import os
import signal

import jax
import numpy as np
import pytest

import tiny_config as tiny
from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import optim
from alexnet_jax import report
from alexnet_jax import resume
from alexnet_jax import trainer

STEPS_PER_EPOCH = 2


def _records(workdir):
  return [{k: v for k, v in r.items() if k != 'wall_time'} for r in report.read_metrics(workdir)]


def _final(workdir):
  ckpts = checkpoint_lib.Checkpoints(workdir, keep=1, async_save=False)
  step = ckpts.latest_step()
  ckpts.close()
  return step, tiny.restore_checkpoint(workdir, step)


def _assert_same_end(workdir, reference):
  """The final checkpoint (state bit for bit, meta) and the metrics equal the reference's."""
  step, (state, meta) = _final(workdir)
  ref_step, (ref_state, ref_meta) = _final(reference)
  assert step == ref_step
  leaves, ref_leaves = tiny.leaves_with_paths(state), tiny.leaves_with_paths(ref_state)
  assert [p for p, _ in leaves] == [p for p, _ in ref_leaves]
  different = [p for (p, a), (_, b) in zip(leaves, ref_leaves) if not np.array_equal(a, b)]
  assert not different, different
  assert meta == ref_meta
  records, ref_records = _records(workdir), _records(reference)
  evals = [r['step'] for r in records if r['event'] == 'eval']
  assert len(evals) == len(set(evals))  # every eval record exactly once
  assert records == ref_records


@pytest.fixture(scope='module')
def config(in_process_runs):
  return tiny.small_config(in_process_runs.folder)


@pytest.fixture(scope='module')
def reference(in_process_runs, config):
  """The uninterrupted run (4 steps; the rate divided by 10 after epoch 1)."""
  workdir = in_process_runs.new_dir('reference')
  with pytest.MonkeyPatch.context() as m:
    result = in_process_runs.run(config, workdir, m)
  assert result['stopped_by'] is None and result['step'] == 2 * STEPS_PER_EPOCH
  lrs = [r['lr'] for r in report.read_metrics(workdir) if r['event'] == 'train']
  assert lrs == [pytest.approx(0.001)]  # the record at step 3, after the division
  return workdir


@pytest.mark.timeout(900)
def test_sigterm_after_every_step_then_resume_ends_as_the_uninterrupted_run(
    in_process_runs, config, reference, monkeypatch, capsys):
  """A chain of runs of the same config, each stopped by SIGTERM right after its first step:
  the stops fall after step 1, 2 (the last of epoch 1: defect 1), 3 and 4 (the last of the
  run: defect 2), and each run resumes from the checkpoint the previous stop saved."""
  workdir = in_process_runs.new_dir('stop_after_every_step')
  for k in range(1, 2 * STEPS_PER_EPOCH + 1):
    result = in_process_runs.run(config, workdir, monkeypatch, stop_after_train_steps=1)
    assert result['step'] == k
    out = capsys.readouterr().out
    if k > 1:
      assert f'Resuming from checkpoint at step {k - 1}' in out
    if k < 2 * STEPS_PER_EPOCH:
      assert result['stopped_by'] == 'SIGTERM'
      assert f'Stopped by SIGTERM: saved a checkpoint at step {k} in' in out
    else:  # the stop came after the last step: the run ends complete, evaluated
      assert result['stopped_by'] is None and 'Done: 4 steps.' in out
    evals = [r['step'] for r in report.read_metrics(workdir) if r['event'] == 'eval']
    assert evals == [s for s in (2, 4) if s <= k]  # an epoch's end is never left undone
  _assert_same_end(workdir, reference)


@pytest.fixture(scope='module')
def stopped_in_eval(in_process_runs, config):
  """A run stopped by SIGTERM during its first evaluation (the end of epoch 1)."""
  workdir = in_process_runs.new_dir('stop_in_eval')
  with pytest.MonkeyPatch.context() as m:
    first = in_process_runs.run(config, workdir, m, stop_in_eval=True)
  assert first['stopped_by'] == 'SIGTERM' and first['step'] == STEPS_PER_EPOCH
  return workdir


@pytest.mark.timeout(900)
def test_sigterm_during_an_evaluation_then_resume(
    in_process_runs, config, reference, stopped_in_eval, monkeypatch, tmp_path):
  workdir = str(tmp_path / 'run')
  tiny.copy_workdir(stopped_in_eval, workdir)
  in_process_runs.run(config, workdir, monkeypatch)
  _assert_same_end(workdir, reference)


@pytest.mark.timeout(900)
def test_sigterm_during_a_save_then_resume(in_process_runs, config, reference, monkeypatch):
  """The signal arrives while the end-of-epoch checkpoint is written in the background."""
  workdir = in_process_runs.new_dir('stop_in_save')
  real_save = checkpoint_lib.Checkpoints.save

  def save_then_signal(self, *args, **kwargs):
    real_save(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)

  with monkeypatch.context() as m:
    m.setattr(checkpoint_lib.Checkpoints, 'save', save_then_signal)
    first = in_process_runs.run(config, workdir, m)
  assert first['stopped_by'] == 'SIGTERM' and first['step'] == STEPS_PER_EPOCH
  in_process_runs.run(config, workdir, monkeypatch)
  _assert_same_end(workdir, reference)


def _as_earlier_versions_saved_it(workdir, step, epoch, last_eval):
  """Rewrites the meta of checkpoint ``step`` (the end of an epoch) as the code before issue 17
  saved a stop on that epoch's last step: still in the epoch, its losses not yet taken by an
  evaluation, policy not updated, no architecture record."""
  evaluated = [r for r in report.read_metrics(workdir)
               if r['event'] == 'eval' and r['step'] == step][0]
  path = os.path.join(workdir, 'checkpoints', str(step), 'meta', 'metadata')
  import json  # pylint: disable=g-import-not-at-top
  with open(path, encoding='utf-8') as f:
    meta = json.load(f)
  meta.pop('architecture')
  meta.update(epoch=epoch, step_in_epoch=STEPS_PER_EPOCH, last_eval=last_eval,
              loss_since_eval=[evaluated['train_loss'] * STEPS_PER_EPOCH, STEPS_PER_EPOCH])
  if epoch == 0:
    meta['lr_policy'] = {k: float(v) for k, v in optim.make_lr_policy(
        tiny.small_config('').optim).init(0.01).items()}
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(meta, f)


@pytest.mark.timeout(900)
@pytest.mark.parametrize('k', [2, 4])
def test_a_checkpoint_saved_by_earlier_versions_on_an_epochs_last_step_resumes(
    in_process_runs, config, reference, stopped_in_eval, monkeypatch, tmp_path, k):
  """Defects 1 and 2 in workdirs written before the fix: the resume does the epoch's end
  (evaluation, policy, a save over the same step) and ends as the uninterrupted run."""
  workdir = str(tmp_path / 'run')
  tiny.copy_workdir(stopped_in_eval if k == 2 else reference, workdir)
  assert _final(workdir)[0] == k
  evals = [r for r in report.read_metrics(workdir) if r['event'] == 'eval']
  earlier = {key: v for key, v in evals[0].items() if key != 'event'} if k == 4 else {}
  _as_earlier_versions_saved_it(workdir, k, k // STEPS_PER_EPOCH - 1, earlier)
  result = in_process_runs.run(config, workdir, monkeypatch)
  assert result['stopped_by'] is None
  _assert_same_end(workdir, reference)
  if k == 4:  # a second resume finds a complete run and changes nothing
    in_process_runs.run(config, workdir, monkeypatch)
    _assert_same_end(workdir, reference)


@pytest.mark.timeout(900)
def test_the_plateau_policy_with_evaluations_every_two_epochs_resumes_by_value(
    in_process_runs, monkeypatch):
  """3 epochs, evaluations after epochs 2 and 3 (the run's end; epoch 1's end has none);
  patience 1 divides the rate at the first evaluation that does not improve. A stop in epoch 3
  (between evaluations) must restore the policy's best error and count: the final checkpoint's
  meta holds the policy state the last evaluation updated, compared by value."""
  config = tiny.small_config(in_process_runs.folder, {
      'num_epochs': 3, 'optim.lr_policy': 'plateau', 'optim.plateau_patience': 1,
      'eval.every_epochs': 2, 'log_every_steps': 1})
  reference = in_process_runs.new_dir('plateau_reference')
  in_process_runs.run(config, reference, monkeypatch)
  evals = [r['step'] for r in report.read_metrics(reference) if r['event'] == 'eval']
  assert evals == [4, 6]
  workdir = in_process_runs.new_dir('plateau_stopped')
  in_process_runs.run(config, workdir, monkeypatch, stop_after_train_steps=5)
  in_process_runs.run(config, workdir, monkeypatch)
  _assert_same_end(workdir, reference)
  lrs = {r['step']: r['lr'] for r in report.read_metrics(reference) if r['event'] == 'train'}
  print('plateau reference rates by step:', lrs)  # a report: whether the rate was divided
  print('plateau reference policy at the end:', _final(reference)[1][1]['lr_policy'])


@pytest.mark.timeout(600)
@pytest.mark.parametrize('field', resume.architecture_fields() + ['crop_size'])
def test_each_architecture_field_changed_on_resume_is_refused(
    in_process_runs, reference, tmp_path, field):
  """One test per field of the network (derived from AlexNet's fields, so new ones count)."""
  if field == 'num_classes':
    pytest.skip('the class count comes from the folder: test_main refuses a 3-class folder')
  workdir = tiny.copy_workdir(reference, str(tmp_path / 'run'))
  os.remove(os.path.join(workdir, checkpoint_lib.CONFIG_FILE))  # identity is not this file
  changed = tiny.small_config(in_process_runs.folder)
  section = changed.data if field == 'crop_size' else changed.model
  old = section[field] if field in section else getattr(trainer.build_model(changed, 2), field)
  if isinstance(old, bool):
    new = not old
  elif isinstance(old, int):
    new = old + 2 if field != 'lrn_groups' else 1
  elif isinstance(old, float):
    new = old / 2
  else:
    pytest.skip(f'no generic second value for {field}={old!r}; the checkpoint meta still '
                'records it (test_checkpoint refuses a changed record)')
  with changed.unlocked():
    section[field] = new
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  records = report.read_metrics(workdir)
  with pytest.raises(checkpoint_lib.ConfigMismatchError, match=rf'\.{field} is '):
    trainer.train_and_evaluate(changed, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before
  assert report.read_metrics(workdir) == records
  assert not os.path.exists(os.path.join(workdir, checkpoint_lib.CONFIG_FILE))


def test_when_every_checkpoint_is_damaged_the_run_stops_and_start_over_begins_again(
    in_process_runs, config, reference, monkeypatch):
  """Defect 6: with every checkpoint damaged the job used to warn 'falling back to an older
  one', move them all aside and train from step 0, replacing metrics.jsonl (exit 0). Now it
  stops with NoIntactCheckpointError (exit 2 in main), nothing moved or rewritten; with
  start_over it sets them aside and trains from step 0 to the uninterrupted run's end."""
  workdir = tiny.copy_workdir(reference, os.path.join(in_process_runs.new_dir('damaged'), 'run'))
  steps = tiny.checkpoint_steps(workdir)
  assert steps
  for step in steps:  # removing (not cutting) the data files leaves the reference's links whole
    data = os.path.join(workdir, 'checkpoints', str(step), 'state', 'ocdbt.process_0', 'd')
    for name in os.listdir(data):
      os.remove(os.path.join(data, name))
  with open(os.path.join(workdir, 'metrics.jsonl'), 'rb') as f:
    metrics_before = f.read()
  with pytest.raises(checkpoint_lib.NoIntactCheckpointError, match='No intact checkpoint remains'):
    in_process_runs.run(config, workdir, monkeypatch)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'rb') as f:
    assert f.read() == metrics_before
  assert tiny.checkpoint_steps(workdir) == steps
  assert not os.path.exists(os.path.join(workdir, checkpoint_lib.DAMAGED_DIR))

  result = in_process_runs.run(config, workdir, monkeypatch, start_over=True)
  assert result['step'] == 2 * STEPS_PER_EPOCH
  assert len(os.listdir(os.path.join(workdir, checkpoint_lib.DAMAGED_DIR))) == len(steps)
  _assert_same_end(workdir, reference)


def test_fresh_states_of_one_setup_share_one_compiled_init(config):
  """A start over (or a second fresh run) of one setup reuses the compiled init, not a new one."""
  s = trainer.setup(config)
  first, second = resume.initial_state(s), resume.initial_state(s)
  assert s.init_state._cache_size() == 1  # pylint: disable=protected-access
  for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
