"""The main job survives ordinary faults and says what happened (issue 7).

Every test here runs ``python -m alexnet_jax.main`` as a user would (processes on 2 fake CPU
devices, see ``tiny_config``; those no test signals are forked from one process that imported
JAX and TensorFlow once) except in-process checks of small pieces (the SIGINT handler, the
free-space check). Faults: kill -9 at three points then resume (bit-identical to
an uninterrupted run), a damaged newest checkpoint, SIGTERM, a diverging loss, a checkpoint
write that fails, and the bad inputs a user can give, each of which must end in one
``error:`` line and no traceback.
"""
import collections
import math
import os
import re
import shutil
import signal
import time

import numpy as np
import pytest

import tiny_config as tiny
from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import optim
from alexnet_jax import resume
from alexnet_jax import stopping
from alexnet_jax import trainer

TRACEBACK = 'Traceback (most recent call last)'


def _error_lines(text: str) -> list[str]:
  return [line for line in text.splitlines() if line.startswith('error: ')]


def _assert_one_clear_error(result: tiny.Result, returncode: int | None = None) -> str:
  """The run failed with exactly one 'error:' line and no traceback; returns that line."""
  assert TRACEBACK not in result.output, result
  errors = _error_lines(result.stderr)
  assert len(errors) == 1, result
  if returncode is None:
    assert result.returncode != 0, result
  else:
    assert result.returncode == returncode, result
  return errors[0]


def _read(path: str) -> str:
  with open(path, encoding='utf-8', errors='replace') as f:
    return f.read()


def _train_records(workdir: str) -> list[tuple]:
  return [(r['step'], r['epoch'], r['lr'], r['train_loss'])
          for r in tiny.read_metrics(workdir) if r['event'] == 'train']


def _eval_records(workdir: str) -> list[dict]:
  return [{k: v for k, v in r.items() if k != 'wall_time'}
          for r in tiny.read_metrics(workdir) if r['event'] == 'eval']


def _assert_same_checkpoint(workdir_a: str, workdir_b: str, step: int) -> None:
  state_a, meta_a = tiny.restore_checkpoint(workdir_a, step)
  state_b, meta_b = tiny.restore_checkpoint(workdir_b, step)
  leaves_a, leaves_b = tiny.leaves_with_paths(state_a), tiny.leaves_with_paths(state_b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  different = [p for (p, a), (_, b) in zip(leaves_a, leaves_b) if not np.array_equal(a, b)]
  assert not different, f'step {step} differs in {different}'
  assert meta_a == meta_b


# --------------------------------------------------------------------------------------------
# kill -9 at three points, a damaged checkpoint, resume: bit-identical to the reference
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_at_three_points_and_a_damaged_checkpoint_then_resume_is_bit_identical(
    tiny_session, tiny_reference):
  """One chained scenario with the reference's exact command (checkpoints at 2, 4, 6, 8):

  1. kill -9 mid-epoch, once step 3 is logged;
  2. resume; kill -9 right after the checkpoint of step 4 (the end of epoch 1) is finalised;
  3. resume; kill -9 while Orbax writes the checkpoint of step 6 (its temporary directory
     exists);
  4. truncate the files of the newest checkpoint (step 4), then resume to the end: the job
     warns, sets step 4 aside and resumes from step 2.

  The final state (parameters, momentum, rng, step), the checkpoint's data position and
  policy state, and every train loss and eval record in metrics.jsonl equal the
  uninterrupted run's exactly.
  """
  ref_dir, _ = tiny_reference
  workdir = tiny_session.new_dir('killed')
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  cmd = tiny_session.command(workdir)
  logs = [os.path.join(tiny_session.base, f'killed_{i}_{os.getpid()}.log') for i in range(3)]

  def logged_step(n):
    return lambda: any(r['event'] == 'train' and r['step'] >= n
                       for r in tiny.read_metrics(workdir))

  def saving(step):
    return lambda: os.path.isdir(ckpt_dir) and any(
        name.startswith(f'{step}.orbax-checkpoint-tmp') for name in os.listdir(ckpt_dir))

  procs = []
  try:
    # 1. Mid-epoch.
    procs.append(tiny_session.start(cmd, logs[0]))
    tiny.wait_until(logged_step(3), procs[-1], 300, logs[0])
    tiny.kill_group(procs[-1])
    after_first = tiny.checkpoint_steps(workdir)
    assert after_first in ([], [2])  # step 2's background save may have been cut off

    # 2. Right after a save: the moment step 4's directory is renamed into place.
    procs.append(tiny_session.start(cmd, logs[1]))
    tiny.wait_until(lambda: os.path.isdir(os.path.join(ckpt_dir, '4')), procs[-1], 300, logs[1],
                    poll=0.002)
    tiny.kill_group(procs[-1])
    assert ('Resuming from checkpoint at step 2' in _read(logs[1])) == (after_first == [2])

    # 3. During a save.
    procs.append(tiny_session.start(cmd, logs[2]))
    tiny.wait_until(saving(6), procs[-1], 300, logs[2], poll=0.002)
    tiny.kill_group(procs[-1])
    assert 'Resuming from checkpoint at step 4' in _read(logs[2])
    assert 6 not in tiny.checkpoint_steps(workdir)
  finally:
    for proc in procs:
      if proc.poll() is None:
        tiny.kill_group(proc)
  assert tiny.checkpoint_steps(workdir) == [2, 4]

  # 4. Damage the newest checkpoint: every file of its state cut to half its size.
  state_dir = os.path.join(ckpt_dir, '4', 'state')
  for root, _, files in os.walk(state_dir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
  result = tiny_session.run(cmd, timeout=400)
  assert result.returncode == 0, result
  assert TRACEBACK not in result.output, result
  assert re.search(r'warning: checkpoint 4 in \S+ is damaged or incomplete', result.output), result
  assert re.search(r'warning: moved checkpoint 4 \(damaged\) to \S+damaged_checkpoints',
                   result.output)
  assert 'Resuming from checkpoint at step 2 (epoch 0, step 2 of the epoch)' in result.output
  assert 'Done: 8 steps.' in result.output

  assert tiny.checkpoint_steps(workdir) == tiny.checkpoint_steps(ref_dir)
  _assert_same_checkpoint(ref_dir, workdir, tiny.TOTAL_STEPS)
  assert _train_records(workdir) == _train_records(ref_dir)
  assert [r[0] for r in _train_records(workdir)] == list(range(1, tiny.TOTAL_STEPS + 1))
  assert _eval_records(workdir) == _eval_records(ref_dir)


# --------------------------------------------------------------------------------------------
# SIGTERM / SIGINT
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(800)
def test_sigterm_finishes_the_step_saves_and_exits_0_and_the_resume_ends_as_uninterrupted(
    tiny_session, tiny_reference):
  """Preemption: SIGTERM after the first step; the job saves where it is and exits 0.

  Periodic checkpoints are off (every 100 steps), so the checkpoint there is the one SIGTERM
  made, and it holds the step the message names. The same command then resumes from it and
  ends with the uninterrupted run's final checkpoint and records (a real signal to a real
  process; tests/test_stop_anywhere.py stops after every step in process).
  """
  ref_dir, _ = tiny_reference
  workdir = tiny_session.new_dir('sigterm')
  log = os.path.join(tiny_session.base, f'sigterm_{os.getpid()}.log')
  cmd = tiny_session.command(workdir, '--config.checkpoint.every_steps=100')
  proc = tiny_session.start(cmd, log)
  try:
    tiny.wait_until(lambda: any(r['event'] == 'train' for r in tiny.read_metrics(workdir)),
                    proc, 300, log)
    os.killpg(proc.pid, signal.SIGTERM)
    returncode = proc.wait(timeout=180)
  finally:
    if proc.poll() is None:
      tiny.kill_group(proc)
  output = _read(log)
  assert returncode == 0, output
  assert TRACEBACK not in output
  match = re.search(r'Stopped by SIGTERM: saved a checkpoint at step (\d+) in \S+; run the same '
                    r'command to resume\.', output)
  assert match, output
  step = int(match.group(1))
  assert 1 <= step < tiny.TOTAL_STEPS
  assert tiny.checkpoint_steps(workdir) == [step]
  state, meta = tiny.restore_checkpoint(workdir, step)
  assert int(state['step']) == step
  assert meta['epoch'] * tiny.STEPS_PER_EPOCH + meta['step_in_epoch'] == step
  assert max(r['step'] for r in tiny.read_metrics(workdir)) <= step

  result = tiny_session.run(cmd, timeout=400)
  assert result.returncode == 0, result
  assert f'Resuming from checkpoint at step {step}' in result.stdout
  _assert_same_checkpoint(ref_dir, workdir, tiny.TOTAL_STEPS)
  assert _train_records(workdir) == _train_records(ref_dir)
  assert _eval_records(workdir) == _eval_records(ref_dir)


def test_sigint_asks_to_stop_and_a_second_sigint_stops_at_once():
  """In process: SIGINT (Ctrl-C) is the same stop request as SIGTERM; a second one interrupts.

  The main job turns a request into "finish the step, save, exit 0" (the SIGTERM test above);
  this checks that SIGINT reaches the same request and that the handlers are put back.
  """
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with stopping.StopRequest() as stop:
    assert stop.signal_name is None
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # Python runs handlers between bytecodes of the main thread
    assert stop.signal_name == 'SIGINT'
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.05)
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
  with stopping.StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert stop.signal_name == 'SIGTERM'
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# --------------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(900)
def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tiny_reference,
                                                                    forked_results):
  """The reference run continued with an absurd learning rate (1e30) diverges at once.

  The job stops with one error naming the step and the last good checkpoint (step 8, which
  still equals the reference's); no non-finite loss is logged, and a checkpoint whose
  parameters gave the NaN (saved just before it, checkpoints every step) is moved aside, so
  nothing broken is left among the checkpoints.
  """
  ref_dir, _ = tiny_reference
  workdir, result = forked_results['nan']
  line = _assert_one_clear_error(result, returncode=1)
  assert 'Resuming from checkpoint at step 8' in result.stdout
  assert 'config.optim.learning_rate is 1e+30, not 0.01 as in the checkpoint' in result.stdout
  match = re.search(r'The training diverged: (.*) at step (\d+), and nothing was saved after it'
                    r'.*the last good checkpoint is step (\d+) in (\S+); run again with a lower '
                    r'--config\.optim\.learning_rate to resume from it', line)
  assert match, line
  bad_step, good_step = int(match.group(2)), int(match.group(3))
  assert bad_step > tiny.TOTAL_STEPS
  steps = tiny.checkpoint_steps(workdir)
  assert good_step == max(steps) and good_step < bad_step
  for step in steps:
    state, _ = tiny.restore_checkpoint(workdir, step)
    assert all(np.all(np.isfinite(x)) for _, x in tiny.leaves_with_paths(state['params']))
  if bad_step - 1 > tiny.TOTAL_STEPS:  # the checkpoint before the NaN was saved, then set aside
    assert f'the checkpoint of step {bad_step - 1}, whose parameters gave it, was moved' in line
    assert os.listdir(os.path.join(workdir, checkpoint_lib.DAMAGED_DIR))
  if good_step == tiny.TOTAL_STEPS:
    _assert_same_checkpoint(ref_dir, workdir, tiny.TOTAL_STEPS)
  losses = [r['train_loss'] for r in tiny.read_metrics(workdir) if r.get('train_loss') is not None]
  assert all(math.isfinite(x) for x in losses)


def test_a_lower_learning_rate_on_resume_scales_the_checkpoints_schedule(capsys):
  """How a run resumed after a divergence takes the lower rate (in process)."""
  config = tiny.get_config()
  policy = optim.make_lr_policy(config.optim)
  state = policy.update(policy.init(0.01), epoch=1)  # after the first epoch: 0.001
  config.optim.learning_rate = 0.002
  scaled = resume.rescale_learning_rate(
      policy, state, {'config_learning_rate': 0.01}, config, verbose=True)
  assert policy.learning_rate(scaled) == pytest.approx(0.0002)
  assert policy.learning_rate(policy.update(scaled, epoch=1)) == pytest.approx(0.0002)
  assert 'the rate goes from 0.001 to 0.0002' in capsys.readouterr().out
  for meta in ({'config_learning_rate': 0.002}, {}):  # unchanged, or a checkpoint without it
    assert resume.rescale_learning_rate(
        policy, state, meta, config, verbose=True) == state


@pytest.mark.parametrize('position, old, new, steps_per_epoch, expected', [
    (2, 4, 8, 2, 1),   # 8 examples seen: the second batch of 8
    (3, 4, 8, 2, 1),   # 12 seen: the next batch of 8 would start past them, but 1 is the last
    (1, 8, 4, 4, 2),   # 8 seen: the third batch of 4
    (0, 4, 8, 2, 0),
    (5, 3, 4, 10, 4),  # 15 seen: batch 4 starts at example 16
])
def test_a_changed_batch_size_continues_the_epoch_after_the_examples_seen(
    position, old, new, steps_per_epoch, expected):
  assert resume.position_for_batch_size(position, old, new, steps_per_epoch) == expected


# --------------------------------------------------------------------------------------------
# Disk full
# --------------------------------------------------------------------------------------------
@pytest.mark.timeout(900)
def test_a_failed_checkpoint_write_stops_cleanly_and_keeps_earlier_checkpoints(
    tiny_reference, forked_results):
  """A write that fails at the OS level, simulated honestly: the resumed job runs under
  RLIMIT_FSIZE=8 MiB, so Orbax's background write of the first new checkpoint (~160 MB in two
  or three data files; the job's other files and compiled programs are far smaller) fails
  with EFBIG ("File too large"), as a full disk fails with ENOSPC. The job reports the
  step and the intact latest checkpoint in one error, leaves no partial directory, and the
  earlier checkpoints still restore to the reference's values.
  """
  ref_dir, _ = tiny_reference
  workdir, result = forked_results['disk_full']
  line = _assert_one_clear_error(result)
  assert 'Resuming from checkpoint at step 8' in result.stdout
  expected = (r'error: Could not write the checkpoint of step 10 in \S+ \(File too large\); the '
              r'checkpoints already there are intact \(the latest is step 8\)\. Free disk space '
              r'or move the workdir to a disk with room, then run the same command to resume\.')
  assert re.fullmatch(expected, line), line
  # No partial directory of step 10 is left; the reference's checkpoints are all there.
  names = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  assert names == sorted(str(step) for step in tiny.checkpoint_steps(ref_dir))
  _assert_same_checkpoint(ref_dir, workdir, 8)


def test_too_little_free_space_is_refused_before_training(tmp_path, monkeypatch, capsys):
  """In process, with shutil.disk_usage reporting a nearly full disk (a simulation)."""
  one_checkpoint = 460 << 20

  def disk_with(free):
    usage = collections.namedtuple('usage', 'total used free')(1 << 40, (1 << 40) - free, free)
    monkeypatch.setattr(trainer.shutil, 'disk_usage', lambda path: usage)

  disk_with(100 << 20)
  with pytest.raises(checkpoint_lib.CheckpointWriteError,
                     match=r'has 0.10 GiB free but one checkpoint takes 0.45 GiB; free space or '
                           r'choose a workdir on a larger disk'):
    trainer.check_free_space(str(tmp_path), one_checkpoint, keep=3)
  disk_with(one_checkpoint * 2)  # room for one more, not for the 4 a run keeps at most
  trainer.check_free_space(str(tmp_path), one_checkpoint, keep=3)
  assert 'may fill up' in capsys.readouterr().err  # warnings go to stderr
  disk_with(one_checkpoint * 5)
  trainer.check_free_space(str(tmp_path), one_checkpoint, keep=3)
  assert capsys.readouterr() == ('', '')


# --------------------------------------------------------------------------------------------
# Bad input: one clear sentence each, nothing lost
# --------------------------------------------------------------------------------------------
def test_bad_files_in_the_folder_are_skipped_counted_and_training_goes_on(tiny_reference):
  """The reference's folder holds a corrupt JPEG, a zero-byte file and a text file (skipped,
  counted in one warning) and a 1x1 PNG and an RGBA PNG (kept: 14 good + 2 = 16 examples)."""
  _, result = tiny_reference
  warnings = [line for line in result.output.splitlines() if line.startswith('warning: ')]
  skipped = [line for line in warnings if 'not readable images and were skipped' in line]
  assert len(skipped) == 1, result
  assert skipped[0].startswith(f'warning: {len(tiny.SKIPPED_FILES)} files in ')
  assert 'Data: 16 training and 4 validation examples in 2 classes' in result.stdout
  assert 'Done: 8 steps.' in result.stdout
  assert TRACEBACK not in result.output


def _bad_input_cases(s: tiny.Session) -> dict:
  """name -> (command, expected return code, regex the one error line must match)."""
  base = s.new_dir('bad_input')
  a_file = os.path.join(base, 'a_file')
  open(a_file, 'w').close()
  empty_class = os.path.join(base, 'empty_class')
  shutil.copytree(os.path.join(s.folder, 'train'), os.path.join(empty_class, 'train'))
  os.makedirs(os.path.join(empty_class, 'train', 'class2'))
  no_imagenet = os.path.join(base, 'no_imagenet')
  os.makedirs(no_imagenet)

  def work(name):
    return os.path.join(base, name)

  return {
      'unknown_config_key': (
          s.command(work('w1'), '--config.optim.lerning_rate=0.1'), 2,
          r"unknown config field --config\.optim\.lerning_rate: the config has no field "
          r"'lerning_rate' \(did you mean 'learning_rate'\?\); check the name against \S+"),
      'wrongly_typed_value': (
          s.command(work('w2'), '--config.batch_size=four'), 2,
          r"flag --config\.batch_size=four: invalid literal for int\(\).*; run with --helpfull"),
      'workdir_is_a_file': (
          s.command(a_file), 2,
          r'--workdir \S+a_file is a file, not a directory; pass a directory'),
      'workdir_unwritable': (  # a path below a file: no user, root included, can create it
          s.command(os.path.join(a_file, 'run')), 2,
          r'--workdir \S+ cannot be written \(Not a directory\); choose a writable directory'),
      'eval_without_checkpoint': (
          s.command(work('w3'), '--mode=eval'), 2,
          r'No checkpoint in \S+w3/checkpoints; train first with: python -m alexnet_jax\.main'),
      'batch_not_divisible': (
          s.command(work('w4'), '--config.batch_size=5'), 2,
          r'config\.batch_size: The global batch size 5 does not divide over the 2 devices .*'
          r'choose a multiple of 2'),
      'eval_batch_not_divisible': (
          s.command(work('w10'), '--config.eval.batch_size=3'), 2,
          r'config\.eval\.batch_size: The global batch size 3 does not divide over the 2 '
          r'devices'),
      'zero_batch_size': (
          s.command(work('w11'), '--config.batch_size=0'), 2,
          r'config\.batch_size must be an integer from 1 to \d+, not 0; set --config\.batch_size'),
      'negative_batch_size': (
          s.command(work('w12'), '--config.batch_size=-3'), 2,
          r'config\.batch_size must be an integer from 1 to \d+, not -3'),
      'zero_checkpoint_interval': (
          s.command(work('w13'), '--config.checkpoint.every_steps=0'), 2,
          r'config\.checkpoint\.every_steps must be an integer >= 1, not 0'),
      'zero_log_interval': (
          s.command(work('w14'), '--config.log_every_steps=0'), 2,
          r'config\.log_every_steps must be an integer >= 1, not 0'),
      'zero_eval_interval': (
          s.command(work('w15'), '--config.eval.every_epochs=0'), 2,
          r'config\.eval\.every_epochs must be an integer >= 1, not 0'),
      'folder_is_a_file': (
          s.command(work('w16'), f'--config.data.folder={a_file}'), 2,
          r'config\.data\.folder \S+a_file is a file, not a directory'),
      'mesh_too_large': (
          s.command(work('w5'), '--config.mesh.data=4'), 2,
          r'The mesh asks for 4 x 1 = 4 devices but only 2 exist; set mesh\.data and mesh\.model'),
      'class_count_differs': (
          s.command(work('w6'), '--config.model.num_classes=5'), 2,
          r'config\.model\.num_classes is 5 but the dataset has 2 classes; set '
          r'--config\.model\.num_classes=2'),
      'empty_class_folder': (
          s.command(work('w7'), f'--config.data.folder={empty_class}'), 2,
          r'Class folder \S+class2 contains no readable images; add images to it or remove it'),
      'missing_folder': (
          s.command(work('w8'), f'--config.data.folder={os.path.join(base, "nowhere")}'), 2,
          r'Image folder \S+nowhere does not exist; set data\.folder'),
      'missing_imagenet': (
          s.command(work('w9'), '--config=alexnet_jax/configs/imagenet.py',
                    f'--config.data.data_dir={no_imagenet}', config=False), 2,
          r'ImageNet is not prepared: put ILSVRC2012_img_train\.tar and ILSVRC2012_img_val\.tar '
          r'.* into \S+, then run: python -m alexnet_jax\.input_pipeline '
          r'--config=alexnet_jax/configs/imagenet\.py'),
  }


_CASE_NAMES = ('unknown_config_key', 'wrongly_typed_value', 'workdir_is_a_file',
               'workdir_unwritable', 'eval_without_checkpoint', 'batch_not_divisible',
               'eval_batch_not_divisible', 'zero_batch_size', 'negative_batch_size',
               'zero_checkpoint_interval', 'zero_log_interval', 'zero_eval_interval',
               'folder_is_a_file', 'mesh_too_large', 'class_count_differs', 'empty_class_folder',
               'missing_folder',
               'missing_imagenet')


@pytest.fixture(scope='module')
def forked_results(tiny_session, tiny_reference):
  """The command lines of the divergence, disk-full and bad-input tests, two at a time, each in
  its own process forked from one that imported JAX and TensorFlow once (tiny_config's
  run_forked: most bad inputs fail within seconds, less than those imports take).

  'nan': the reference run continued with a learning rate of 1e30 and a checkpoint every step;
  'disk_full': continued under RLIMIT_FSIZE=8 MiB (``ulimit -f 8192``; Python ignores SIGXFSZ,
  so a write past the limit fails with EFBIG, as one on a full disk fails with ENOSPC), each in
  a copy of the reference's workdir; 'bad_input': name -> ((command, return code, pattern),
  result).
  """
  ref_dir, _ = tiny_reference
  nan_dir = tiny.copy_workdir(ref_dir, os.path.join(tiny_session.new_dir('nan'), 'run'))
  full_dir = tiny.copy_workdir(ref_dir, os.path.join(tiny_session.new_dir('disk_full'), 'run'))
  cases = _bad_input_cases(tiny_session)
  assert tuple(cases) == _CASE_NAMES
  cmds = [tiny_session.command(nan_dir, '--config.num_epochs=3',
                               '--config.optim.learning_rate=1e30',
                               '--config.checkpoint.every_steps=1'),
          tiny_session.command(full_dir, '--config.num_epochs=3')]
  results = tiny_session.run_forked(cmds + [cmd for cmd, _, _ in cases.values()], timeout=900,
                                    fsize_limits={1: 8192 << 10})
  return {'nan': (nan_dir, results[0]), 'disk_full': (full_dir, results[1]),
          'bad_input': {name: (cases[name], r) for name, r in zip(cases, results[2:])}}


@pytest.mark.timeout(900)
@pytest.mark.parametrize('name', _CASE_NAMES)
def test_bad_input_gets_one_clear_error_line(forked_results, name):
  (cmd, returncode, pattern), result = forked_results['bad_input'][name]
  line = _assert_one_clear_error(result, returncode)
  assert re.fullmatch(r'error: ' + pattern + r'.*', line), f'{line}\n{result}'
  # Nothing was trained or written for a run that was refused.
  workdir = next(a.split('=', 1)[1] for a in cmd if a.startswith('--workdir='))
  assert not os.path.isdir(os.path.join(workdir, 'checkpoints')), result
