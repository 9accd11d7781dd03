"""Checkpoints: keep-last-k-and-best, damaged checkpoints, config compatibility, and a state
saved under one mesh layout restoring under another and training on identically."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import layout as layout_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import train as train_lib


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
  assert 'the latest is step 3' in message and '-1' not in message
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


def _config(num_classes=10, lrn_after_pool=False):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict({'num_classes': num_classes, 'use_lrn': True,
                                       'lrn_after_pool': lrn_after_pool, 'lrn_size': 5})
  c.data = ml_collections.ConfigDict({'crop_size': 227})
  c.batch_size = 8
  return c


def test_incompatible_config_is_refused_with_the_difference(tmp_path):
  workdir = str(tmp_path)
  checkpoint_lib.check_and_save_config(_config(), workdir, 10)
  saved = json.load(open(os.path.join(workdir, checkpoint_lib.CONFIG_FILE)))
  assert saved['model']['num_classes'] == 10
  # No checkpoint yet: any config may take the workdir over.
  checkpoint_lib.check_and_save_config(_config(lrn_after_pool=True), workdir, 10)
  ckpts = checkpoint_lib.Checkpoints(workdir, keep=1, async_save=False)
  ckpts.save(1, _tree(1), {})
  ckpts.close()
  with pytest.raises(checkpoint_lib.ConfigMismatchError, match='model.num_classes is 10 there '
                     'but 20 now'):
    checkpoint_lib.check_and_save_config(_config(num_classes=20, lrn_after_pool=True), workdir, 20)
  # A compatible change (the batch size) is accepted.
  other = _config(lrn_after_pool=True)
  other.batch_size = 16
  checkpoint_lib.check_and_save_config(other, workdir, 10)


def test_checkpoint_saved_under_data_parallel_restores_under_towers(tmp_path):
  """Issue: a checkpoint saved under data=2 restores under model=2 and training continues."""
  model = model_lib.AlexNet(num_classes=10, dropout_rate=0.0)
  tx = optim.sgd_with_injected_lr(0.01)
  abstract = jax.eval_shape(lambda r: train_lib.create_train_state(r, model, tx),
                            jax.random.PRNGKey(0))
  rng = np.random.RandomState(0)
  batches = [{'image': rng.randn(4, 227, 227, 3).astype(np.float32),
              'label': rng.randint(0, 10, size=4).astype(np.int32)} for _ in range(2)]

  data2 = layout_lib.make_steps(model, tx, layout_lib.make_mesh(2, 1, jax.devices()[:2]),
                                layout_lib.get_layout('towers'), abstract)
  towers = layout_lib.make_steps(model, tx, layout_lib.make_mesh(1, 2, jax.devices()[2:4]),
                                 layout_lib.get_layout('towers'), abstract)
  state = layout_lib.place_state(train_lib.create_train_state(jax.random.PRNGKey(0), model, tx),
                                 data2)
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
