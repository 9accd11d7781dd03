"""Fine-tuning from imported weights (``--config.init_from``, ``configs/finetune.py``).

A BVLC-format stand-in (.caffemodel, random weights, 1000 classes) fine-tuned on a two-class
folder: the run's first state holds exactly the file's conv1..fc7 (compared with what
``alexnet_jax.weights.load`` reads from it), a fresh fc8 of two classes, and the log says so;
the network and the preprocessing are the file's preset's.
"""

import shutil

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import resume
from alexnet_jax import trainer
from alexnet_jax import weights
from alexnet_jax.configs import finetune

import tiny_config as tiny
import weight_files


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('finetune')
  w = weight_files.random_weights(weight_files.CAFFE_CONVS, seed=5)
  path = root / 'bvlc_alexnet.caffemodel'
  path.write_bytes(weight_files.caffemodel(w, v1=True))
  return str(path), tiny.make_image_folder(str(root / 'images')), root


def _config(path, folder):
  c = finetune.get_config()
  c.init_from, c.data.folder = path, folder
  c.batch_size, c.eval.batch_size = 4, 4
  c.progress_bar = False
  return c


def test_a_finetune_starts_from_the_imported_layers(files, in_process_runs, capsys):
  path, folder, root = files
  config, imported = resume.imported_weights(_config(path, folder))
  assert (config.model.preset, config.data.preprocess, config.data.warp,
          config.data.crop_size) == ('bvlc', 'bvlc', True, 227)
  s = in_process_runs.setup(config)  # the session's: its jitted init serves the test below too
  workdir = str(root / 'run')
  ckpts = checkpoint_lib.Checkpoints(workdir, keep=1, async_save=False)
  loop = trainer._TrainingLoop(s, workdir, ckpts, None, imported)  # pylint: disable=protected-access
  loop.loop = loop.resume_or_init()
  params = jax.device_get(loop.loop.state.params)
  loop.save()
  ckpts.close()
  # A run that resumes from its own checkpoint never converts the file's params again.
  def unused():
    raise AssertionError('init_from converted on resume')
  ckpts = checkpoint_lib.Checkpoints(workdir, keep=1, async_save=False)
  resumed = trainer._TrainingLoop(s, workdir, ckpts, None, unused)  # pylint: disable=protected-access
  restored = jax.device_get(resumed.resume_or_init().state.params)
  np.testing.assert_array_equal(restored['fc8']['kernel'], params['fc8']['kernel'])
  ckpts.close()
  _, reference = weights.load(path)
  for layer in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7'):
    for part in ('kernel', 'bias'):
      np.testing.assert_array_equal(params[layer][part], reference['params'][layer][part])
  assert params['fc8']['kernel'].shape == (4096, tiny.NUM_CLASSES)
  assert not np.any(params['fc8']['bias'])  # a fresh fc8: zero bias, not the file's
  assert 'fc8 is re-initialised' in capsys.readouterr().out


def test_the_file_decides_the_preset(files):
  path, folder, _ = files
  config = _config(path, folder)
  config.model.preset = 'torchvision'
  with pytest.raises(ValueError, match="holds a 'bvlc' network"):
    resume.imported_weights(config)
  config.model.preset = ''
  config.init_from = path + '.missing'
  with pytest.raises(FileNotFoundError, match='config.init_from'):
    resume.imported_weights(config)


def test_the_command_line_takes_init_from(files, tmp_path):
  _, folder, _ = files
  session = tiny.Session(str(tmp_path))
  result = session.run(
      [*session.command(str(tmp_path / 'run'), config=False),
       '--config=alexnet_jax/configs/finetune.py', f'--config.data.folder={folder}',
       f'--config.init_from={tmp_path / "no_such.caffemodel"}'], timeout=300)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and lines[-1].startswith('error: config.init_from:'), result
  assert 'Traceback' not in result.stderr


def _final_checkpoint(workdir):
  step = tiny.checkpoint_steps(workdir)[-1]
  return step, tiny.restore_checkpoint(workdir, step)


@pytest.mark.timeout(900)
def test_a_resume_does_not_open_the_init_from_file(files, in_process_runs, monkeypatch,
                                                   tmp_path, capsys):
  """A fine-tune stopped after its first step resumes with its init_from file replaced by
  garbage: the network comes from the checkpoints' record (the same resolved config), the
  params from the checkpoint, and the run ends bit for bit as the uninterrupted one."""
  path, folder, _ = files
  own = str(tmp_path / 'weights.caffemodel')
  shutil.copy(path, own)
  config = _config(own, folder)
  config.batch_size, config.num_epochs = 8, 1  # two steps
  config.checkpoint.every_steps, config.checkpoint.keep = 100, 1
  # The resolved config is what in_process_runs sets up (resolving it again changes nothing).
  config, _ = resume.imported_weights(config)
  resolved = []
  real_imported_weights = resume.imported_weights

  def spy(*args, **kwargs):
    result = real_imported_weights(*args, **kwargs)
    resolved.append(result[0].to_json_best_effort(sort_keys=True))
    return result

  monkeypatch.setattr(resume, 'imported_weights', spy)
  reference = str(tmp_path / 'reference')
  in_process_runs.run(config, reference, monkeypatch)
  workdir = str(tmp_path / 'run')
  assert in_process_runs.run(config, workdir, monkeypatch,
                             stop_after_train_steps=1)['stopped_by'] == 'SIGTERM'
  with open(own, 'wb') as f:
    f.write(b'not a caffemodel any more')
  capsys.readouterr()
  in_process_runs.run(config, workdir, monkeypatch)
  assert 'Resuming from checkpoint at step 1' in capsys.readouterr().out
  with pytest.raises(weights.WeightsError):  # a start over does read it
    resume.imported_weights(config, workdir, start_over=True)
  assert resolved == [config.to_json_best_effort(sort_keys=True)] * 3
  (step, (state, meta)), (ref_step, (ref_state, ref_meta)) = (
      _final_checkpoint(workdir), _final_checkpoint(reference))
  assert step == ref_step == 2 and meta == ref_meta
  leaves, ref_leaves = tiny.leaves_with_paths(state), tiny.leaves_with_paths(ref_state)
  assert [p for p, _ in leaves] == [p for p, _ in ref_leaves]
  assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(leaves, ref_leaves))
