"""Checkpoints: keep-last-k-and-best, damaged checkpoints, config compatibility, and a state
saved under one mesh layout restoring under another and training on identically."""
import json
import os

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import layout as layout_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import steps as steps_lib


def _tree(scale):
  return {'w': jnp.arange(6.0) * scale, 'b': jnp.full((3,), scale, jnp.float32)}


def _abstract(tree):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def test_keeps_last_k_and_best_across_restarts(tmp_path):
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), keep=2, async_save=False)
  errors = {1: None, 2: 0.3, 3: None, 4: 0.6, 5: None}
  for step, error in errors.items():
    ckpts.save(step, _tree(step), {'epoch': step}, val_top1_error=error)
  ckpts.close()
  again = checkpoint_lib.Checkpoints(str(tmp_path), keep=2, async_save=False)
  assert again.all_steps() == [2, 4, 5]  # the last two, and the best (step 2, error 0.3)
  assert again.best_step() == 2
  assert again.latest_step() == 5
  again.save(6, _tree(6), {'epoch': 6})
  again.wait()
  assert again.all_steps() == [2, 5, 6]
  state, meta = again.restore(5, _abstract(_tree(0)))
  chex.assert_trees_all_close(state, _tree(5))
  assert meta == {'epoch': 5}
  again.close()



def test_a_failed_wait_with_no_save_in_flight_names_no_step(tmp_path):
  """The write error of a wait with no save of its own says 'a checkpoint', never step -1."""
  import errno
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), keep=2, async_save=False)
  ckpts.save(3, _tree(3), {'epoch': 3})
  ckpts.wait()

  def disk_full():
    raise OSError(errno.ENOSPC, 'No space left on device')

  ckpts.manager.wait_until_finished = disk_full
  with pytest.raises(checkpoint_lib.CheckpointWriteError) as raised:
    ckpts.wait()
  message = str(raised.value)
  assert message.startswith(f'Could not write a checkpoint in {ckpts.directory} ')
  assert 'the latest is step 3' in message
  # The step number itself (the message also holds a temporary path, which may contain '-1').
  assert 'step -1' not in message and 'of step' not in message
  assert ckpts.all_steps() == [3]

@pytest.mark.parametrize('damage', ['truncate', 'remove'])
def test_damaged_latest_falls_back_to_newest_intact(tmp_path, damage):
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, async_save=False)
  for step in (1, 2, 3):
    ckpts.save(step, _tree(step), {'epoch': step})
  ckpts.close()
  latest = os.path.join(str(tmp_path), 'checkpoints', '3', 'state')
  files = [os.path.join(r, f) for r, _, fs in os.walk(latest) for f in fs]
  assert files
  for path in files:
    if damage == 'truncate':
      with open(path, 'r+b') as f:
        f.truncate(max(os.path.getsize(path) // 2, 0))
    else:
      os.remove(path)
  again = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, async_save=False)
  step, state, meta = again.restore_latest_intact(_abstract(_tree(0)))
  assert step == 2 and meta == {'epoch': 2}
  chex.assert_trees_all_close(state, _tree(2))
  again.close()


@pytest.mark.parametrize('damage, reason', [
    ('cut', 'its metadata is not valid JSON'),
    ('not an object', 'its metadata is not valid JSON'),
    ('remove', 'a file of it is missing'),
])
def test_a_damaged_meta_falls_back_to_the_older_checkpoint(tmp_path, capsys, damage, reason):
  """The meta is read alone (read_meta) and before a restore by the same reader: a damaged one
  is refused by both, and the restore falls back to the older checkpoint in words."""
  import shutil
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, async_save=False)
  for step in (1, 2):
    ckpts.save(step, _tree(step), {'epoch': step})
  ckpts.close()
  step_dir = checkpoint_lib.step_directory(str(tmp_path), 2)
  metadata = os.path.join(step_dir, 'meta', 'metadata')
  if damage == 'remove':
    shutil.rmtree(os.path.dirname(metadata))
  else:
    with open(metadata, 'w', encoding='utf-8') as f:
      f.write('{"epo' if damage == 'cut' else '[1, 2]')
  with pytest.raises(Exception) as raised:
    checkpoint_lib.read_meta(step_dir)
  assert checkpoint_lib.damage_reason(raised.value) == reason
  assert checkpoint_lib.read_meta(checkpoint_lib.step_directory(str(tmp_path), 1)) == {'epoch': 1}
  again = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, async_save=False)
  step, state, meta = again.restore_latest_intact(_abstract(_tree(0)), set_aside=False)
  again.close()
  assert step == 1 and meta == {'epoch': 1}
  chex.assert_trees_all_close(state, _tree(1))
  assert (f'warning: checkpoint 2 in {again.directory} is damaged or incomplete ({reason}); '
          'trying an older one.') in capsys.readouterr().err


def _saved(tmp_path, steps=(1, 2), network=None):
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, async_save=False)
  for step in steps:
    ckpts.save(step, _state_like(step), {'epoch': step, 'architecture': network or _NETWORK})
  ckpts.close()
  return checkpoint_lib.Checkpoints(str(tmp_path), keep=3, async_save=False)


@flax.struct.dataclass
class _State:
  """A small train state: ``params`` is what the shape check reads."""
  params: dict
  step: jax.Array


def _state_like(scale, classes=10):
  return _State(params={'fc8': {'kernel': jnp.full((4, classes), scale, jnp.float32)}},
                step=jnp.asarray(scale, jnp.int32))


_NETWORK = {'model.num_classes': 10, 'model.lrn_k': 2.0, 'data.crop_size': 227}


def test_a_checkpoint_of_another_network_is_refused_by_its_own_record(tmp_path):
  """Identity comes from each checkpoint's meta, whatever config.json holds (or lacks)."""
  ckpts = _saved(tmp_path)
  with open(os.path.join(str(tmp_path), checkpoint_lib.CONFIG_FILE), 'wb') as f:
    f.write(b'\xff\xfe garbage')  # a damaged side file changes nothing
  other = {**_NETWORK, 'model.lrn_k': 1.0}
  before = sorted(os.listdir(os.path.join(str(tmp_path), 'checkpoints')))
  with pytest.raises(checkpoint_lib.ConfigMismatchError,
                     match=r'different network \(model\.lrn_k is 2\.0 there but 1\.0 now\)'):
    ckpts.restore_latest_intact(_abstract(_state_like(0)), other)
  assert sorted(os.listdir(os.path.join(str(tmp_path), 'checkpoints'))) == before
  assert not os.path.exists(os.path.join(str(tmp_path), checkpoint_lib.DAMAGED_DIR))
  step, state, _ = ckpts.restore_latest_intact(_abstract(_state_like(0)), dict(_NETWORK))
  assert step == 2


def test_a_checkpoint_without_a_record_is_refused_by_its_parameter_shapes(tmp_path):
  """Checkpoints of earlier versions have no record: their saved shapes still tell (a shape
  mismatch is another network, not damage: nothing is moved)."""
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, async_save=False)
  ckpts.save(1, _state_like(1, classes=3), {'epoch': 1})
  ckpts.close()
  again = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, async_save=False)
  with pytest.raises(checkpoint_lib.ConfigMismatchError,
                     match=r"\['fc8'\]\['kernel'\] has shape \(4, 3\) there but \(4, 2\) now"):
    again.restore_latest_intact(_abstract(_state_like(0, classes=2)), dict(_NETWORK))
  assert again.all_steps() == [1]


def test_when_every_checkpoint_is_damaged_nothing_is_moved_and_the_error_says_so(tmp_path):
  ckpts = _saved(tmp_path)
  for step in (1, 2):
    for root, _, files in os.walk(os.path.join(str(tmp_path), 'checkpoints', str(step), 'state')):
      for name in files:
        os.remove(os.path.join(root, name))
  with pytest.raises(checkpoint_lib.NoIntactCheckpointError, match='No intact checkpoint remains'):
    ckpts.restore_latest_intact(_abstract(_state_like(0)), dict(_NETWORK))
  assert ckpts.all_steps() == [1, 2]
  ckpts.set_aside_all()  # --start_over
  assert ckpts.all_steps() == []
  assert len(os.listdir(os.path.join(str(tmp_path), checkpoint_lib.DAMAGED_DIR))) == 2


def test_replace_saves_over_a_checkpoint_of_the_same_step(tmp_path):
  ckpts = _saved(tmp_path)
  ckpts.save(2, _state_like(2), {'epoch': 3}, val_top1_error=0.25, replace=True)
  ckpts.close()
  again = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, async_save=False)
  assert again.all_steps() == [1, 2] and again.best_step() == 2
  assert again.restore(2, _abstract(_state_like(0)))[1]['epoch'] == 3


def _raised_from(error, cause):
  error.__cause__ = cause
  return error


# Orbax's words for any failed read; tensorstore's, with the kind of damage, are in its cause.
_ORBAX_READ_ERROR = ('Encountered error while reading array index: (slice(0, 1024, 1),). See '
                     'full TensorStore details: <bound method pybind11_detail_function_record_v1'
                     '.spec of TensorStore({...})>.')


@pytest.mark.parametrize('error, reason', [
    (FileNotFoundError(2, 'No such file or directory'), 'a file of it is missing'),
    (_raised_from(Exception(_ORBAX_READ_ERROR), ValueError(
        'OUT_OF_RANGE: Error reading "w3/0.0" in OCDBT database at local file "x": Requested '
        'byte range [0, 9) is not valid for value of size 4')), 'a file of it is cut short'),
    (_raised_from(Exception(_ORBAX_READ_ERROR), ValueError(
        'FAILED_PRECONDITION: Error reading "w3/0.0" in OCDBT database at local file "x": '
        'ZSTD_decompressStream() failed: Unknown frame descriptor')), 'a file of it is corrupt'),
    (ValueError('OUT_OF_RANGE: Error reading Byte range [0, 373) of local file "x" <bound method '
                'pybind11_object.foo of <tensorstore.Spec>> ...'), 'a file of it is cut short'),
    (ValueError('NOT_FOUND: Error opening "zarr" driver: Metadata at local file "x" does not '
                'exist'), 'a file of it is missing'),
    (RuntimeError('something <bound method pybind11_object.__repr__ of <x>> happened [spec=...]'),
     'RuntimeError: something'),
])
def test_damage_reasons_are_words_not_library_fragments(error, reason):
  assert checkpoint_lib.damage_reason(error) == reason


def test_the_config_is_written_with_the_run_info_and_any_old_file_is_replaced(tmp_path):
  path = os.path.join(str(tmp_path), checkpoint_lib.CONFIG_FILE)
  with open(path, 'w', encoding='utf-8') as f:
    f.write('[1, 2, 3]')
  config = ml_collections.ConfigDict({'model': {'num_classes': 0}, 'batch_size': 8})
  checkpoint_lib.save_config(config, str(tmp_path), 10, {'cpu': 'x'})
  saved = json.load(open(path, encoding='utf-8'))
  assert saved == {'model': {'num_classes': 10}, 'batch_size': 8, 'run': {'cpu': 'x'}}


def test_checkpoint_saved_under_data_parallel_restores_under_towers(tmp_path):
  """Issue: a checkpoint saved under data=2 restores under model=2 and training continues.

  At the smallest input the network takes (67 px, fc6 256 wide): how a checkpoint is laid out
  and restored does not depend on the input size, and the 227-px network's fc6 made this test
  the suite's costliest of its kind (two steps compiled and a 460 MB checkpoint)."""
  model = model_lib.AlexNet(num_classes=10, dropout_rate=0.0)
  tx = optim.sgd_with_injected_lr(0.01)
  image_shape = (1, 67, 67, 3)
  abstract = jax.eval_shape(lambda r: steps_lib.create_train_state(r, model, tx, image_shape),
                            jax.random.PRNGKey(0))
  rng = np.random.RandomState(0)
  batches = [{'image': rng.randn(4, *image_shape[1:]).astype(np.float32),
              'label': rng.randint(0, 10, size=4).astype(np.int32)} for _ in range(2)]

  data2 = layout_lib.make_steps(model, tx, layout_lib.make_mesh(2, 1, jax.devices()[:2]),
                                layout_lib.get_layout('towers'), abstract)
  towers = layout_lib.make_steps(model, tx, layout_lib.make_mesh(1, 2, jax.devices()[2:4]),
                                 layout_lib.get_layout('towers'), abstract)
  new_state = steps_lib.jit_create_train_state(model, tx, image_shape)
  state = layout_lib.place_state(new_state(jax.random.PRNGKey(0)), data2)
  state, _ = data2.train_step(state, layout_lib.place_batch(batches[0], data2))
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), keep=1, async_save=False)
  ckpts.save(1, state, {'epoch': 0})
  ckpts.close()

  # Continue under data=2 in memory: the reference.
  reference, ref_metrics = data2.train_step(state, layout_lib.place_batch(batches[1], data2))

  again = checkpoint_lib.Checkpoints(str(tmp_path), keep=1, async_save=False)
  target = checkpoint_lib.abstract_like(abstract, towers.state_sharding)
  restored, _ = again.restore(1, target)
  again.close()
  kernel = restored.params['conv2']['kernel']
  assert kernel.addressable_shards[0].data.shape == (5, 5, 48, 128)  # one tower per device
  continued, metrics = towers.train_step(restored, layout_lib.place_batch(batches[1], towers))
  chex.assert_trees_all_close(jax.device_get(continued.params), jax.device_get(reference.params),
                              atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['loss']), float(ref_metrics['loss']), rtol=1e-5)
  assert int(continued.step) == 2


def test_a_damaged_checkpoint_falls_back_with_one_warning_line_in_words(tmp_path, monkeypatch,
                                                                        capsys, caplog):
  """Defect 5 as a user met it: the newest checkpoint's largest data file cut in half, so some
  reads fail while others are still in flight. Before the fix this printed tracebacks
  ("Exception ignored in: <coroutine ...>", "RuntimeError: Event loop is closed", a few to
  dozens of them) and a reason cut inside a ``<bound method pybind11...`` fragment. Now
  stderr holds the warning with the reason in words and the line saying where the checkpoint
  went; nothing is reported when the error is dropped; the older checkpoint restores exactly."""
  import gc
  import glob
  import logging
  import sys
  trees = {step: {f'w{i}': jax.random.normal(jax.random.key(10 * step + i), (1024, 1024))
                  for i in range(4)} for step in (1, 2)}
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, async_save=False)
  for step, tree in trees.items():
    ckpts.save(step, tree, {'epoch': step})
  ckpts.close()
  state_dir = os.path.join(str(tmp_path), 'checkpoints', '2', 'state')
  largest = max(glob.glob(os.path.join(state_dir, '**', 'd', '*'), recursive=True),
                key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)
  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', reported.append)
  caplog.set_level(logging.WARNING, logger='asyncio')
  again = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, async_save=False)
  step, state, meta = again.restore_latest_intact(_abstract(trees[1]))
  gc.collect()
  assert not [(type(r.exc_value).__name__, str(r.exc_value)[:80], repr(r.object)[:60])
              for r in reported]
  assert not [r.getMessage()[:80] for r in caplog.records if r.name == 'asyncio']
  out, err = capsys.readouterr()
  lines = err.splitlines()
  assert len(lines) == 2, err
  assert lines[0] == (f'warning: checkpoint 2 in {again.directory} is damaged or incomplete (a '
                      'file of it is cut short); trying an older one.')
  assert lines[1].startswith('warning: moved checkpoint 2 (damaged) to ')
  assert not out
  assert step == 1 and meta == {'epoch': 1}
  chex.assert_trees_all_equal(state, trees[1])
  again.close()


class _Report:
  def __init__(self, exc_value, culprit):
    self.exc_type, self.exc_value, self.exc_traceback = type(exc_value), exc_value, None
    self.err_msg, self.object = None, culprit


class _Suspend:
  def __await__(self):
    yield


async def _abandoned_read():
  try:
    await _Suspend()
  finally:
    raise RuntimeError('Event loop is closed')  # what Orbax's abandoned reads raise on close


def _abandon_a_read():
  coroutine = _abandoned_read()
  coroutine.send(None)  # suspended, then dropped: Python reports it when it is collected
  del coroutine


def test_abandoned_reads_of_a_failed_restore_are_not_reported_one_by_one(monkeypatch):
  """Defect 5's mechanism: a failed restore leaves coroutines that Python reports ("Exception
  ignored in coroutine ...", a traceback each, through sys.unraisablehook) when collected; the
  guard around every restore attempt drops those reports (and only those), from then on, since
  they may come when the error that holds them goes, so the user reads one warning line."""
  import gc
  import sys
  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', reported.append)
  _abandon_a_read()
  gc.collect()
  assert len(reported) == 1  # what reached stderr before
  reported.clear()
  with checkpoint_lib._quiet_failed_reads():  # pylint: disable=protected-access
    _abandon_a_read()
  assert not reported
  _abandon_a_read()  # after the guard too: such reports may come when the error goes
  gc.collect()
  assert not reported
  sys.unraisablehook(_Report(RuntimeError('something else'), None))
  assert [str(r.exc_value) for r in reported] == ['something else']  # others still reported


def test_a_failed_writes_directory_is_removed_while_a_writer_still_adds_files(tmp_path):
  """After a failed write Orbax's other writer threads may add files for a moment; a single
  removal pass then leaves the directory behind. The partial directory of the failed step goes,
  however long they write (here 0.3 s); other steps' directories stay. (No CheckpointManager:
  Orbax's own clean-up of temporary directories would hide what this one does.)"""
  import threading  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  ckpts = types.SimpleNamespace(directory=str(tmp_path))
  partial = os.path.join(ckpts.directory, '10.orbax-checkpoint-tmp-123')
  others = [os.path.join(ckpts.directory, name) for name in ('8', '100.orbax-checkpoint-tmp-4')]
  os.makedirs(os.path.join(partial, 'state'))
  for path in others:
    os.makedirs(path)
  stop_at = time.monotonic() + 0.3

  def late_writer():
    i = 0
    while time.monotonic() < stop_at:
      try:
        os.makedirs(os.path.join(partial, 'meta'), exist_ok=True)
        with open(os.path.join(partial, 'meta', f'{i}.json'), 'w', encoding='utf-8') as f:
          f.write('{}')
      except FileNotFoundError:  # removed between the two calls: write again
        pass
      i += 1
      time.sleep(0.001)

  writer = threading.Thread(target=late_writer)
  writer.start()
  try:
    checkpoint_lib.Checkpoints._remove_partial(ckpts, 10)  # pylint: disable=protected-access
  finally:
    writer.join()
  assert not os.path.exists(partial)
  assert all(os.path.isdir(path) for path in others)
