"""alexnet_jax.weights against runtimes nobody here wrote: ONNX Runtime and PyTorch.

The stand-in files (tests/weight_files.py) have the public files' structure with random
fan-in-scaled weights: the ONNX zoo's bvlcalexnet graph, CaffeNet's, .caffemodel files in both
NetParameter formats, torchvision's AlexNet (torch.nn, exported by torch.onnx and saved as
.pth and .safetensors). Logits must agree within 1e-4 of their scale.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import weight_formats as wf
from alexnet_jax import weights

import weight_files as files

onnx = pytest.importorskip('onnx', reason='weight parity tests need onnx: pip install -e ".[compare]"')
ort = pytest.importorskip('onnxruntime',
                          reason='weight parity tests need onnxruntime: pip install -e ".[compare]"')

RTOL = 1e-4


def assert_logits_close(ours, reference):
  """Within RTOL of the logits' scale (elementwise relative error is meaningless near 0)."""
  ours, reference = np.asarray(ours), np.asarray(reference)
  assert ours.shape == reference.shape
  scale = np.abs(reference).max()
  np.testing.assert_allclose(ours, reference, rtol=RTOL, atol=RTOL * scale)


@functools.lru_cache(maxsize=None)
def _jitted(model):
  return jax.jit(model.apply)


def our_logits(model, variables, images):
  return np.asarray(_jitted(model)(variables, images))


@functools.lru_cache(maxsize=None)
def _session(path):
  return ort.InferenceSession(path, providers=['CPUExecutionProvider'])


def ort_run(path, nchw, output=0):
  session = _session(str(path))
  return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(nchw)})[output]


@functools.lru_cache(maxsize=None)
def loaded(path):
  """``weights.load(path)`` once per file (the stand-in files are read by several tests)."""
  return weights.load(path)


def rgb_images(size, n=4, seed=1):
  """Caffe-scaled inputs (0..255 minus a mean): big enough that LRN matters."""
  return np.random.default_rng(seed).uniform(-120, 130, (n, size, size, 3)).astype(np.float32)


def nchw(images, bgr=False):
  return (images[..., ::-1] if bgr else images).transpose(0, 3, 1, 2)


def random_params(model, seed=0):
  """Random variables of the model's shapes at its preset's input (NumPy: no init compile)."""
  return {'params': files.random_params(model, weights.input_size(model), seed)}


def same_params(a, b) -> bool:
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return (jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
          and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b)))


@pytest.fixture(scope='module')
def caffe_weights():
  return files.random_weights(files.CAFFE_CONVS)


class _Zoo:
  """zoo[('bvlc'|'caffenet', opset)]: the path of a zoo-structured graph, written when first
  asked for (each is ~240 MB)."""

  def __init__(self, base, caffe_weights):
    self.base, self.weights, self.paths = base, caffe_weights, {}

  def __getitem__(self, key):
    if key not in self.paths:
      name, opset = key
      path = self.base / f'{name}-{opset}.onnx'
      onnx.save(files.zoo_graph(self.weights, lrn_after_pool=name == 'caffenet', opset=opset),
                path)
      self.paths[key] = path
    return self.paths[key]


@pytest.fixture(scope='module')
def zoo(tmp_path_factory, caffe_weights):
  return _Zoo(tmp_path_factory.mktemp('zoo'), caffe_weights)


# --------------------------------------------------------------------------------------------
# Caffe lineage: the zoo's graphs, .caffemodel files
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name,opset', [('bvlc', 9), ('bvlc', 12), ('caffenet', 9)])
def test_zoo_graph_matches_onnx_runtime(zoo, name, opset):
  path = zoo[name, opset]
  model, variables = loaded(path)
  assert weights.preset_of(model) == (name, {})
  assert model.num_classes == 1000
  images = rgb_images(227)
  ours = our_logits(model, variables, images)
  # The file takes BGR (Caffe's order); ours, loaded with bgr_to_rgb, takes RGB.
  assert_logits_close(ours, ort_run(path, nchw(images, bgr=True), output=1))
  assert_logits_close(ours[:1], ort_run(path, nchw(images[:1], bgr=True), output=1))
  if (name, opset) == ('bvlc', 9):  # our batch 1 too (one more compile, once)
    assert_logits_close(our_logits(model, variables, images[:1]),
                        ort_run(path, nchw(images[:1], bgr=True), output=1))


def test_keep_bgr_takes_the_files_channel_order(zoo, tmp_path):
  path = zoo['bvlc', 9]
  _, rgb = loaded(path)
  model, bgr = weights.load(path, bgr_to_rgb=False)
  np.testing.assert_array_equal(bgr['params']['conv1']['kernel'],
                                rgb['params']['conv1']['kernel'][:, :, ::-1, :])
  images = rgb_images(227)
  assert_logits_close(our_logits(model, bgr, images[..., ::-1]),
                      ort_run(path, nchw(images, bgr=True), output=1))
  # Converted with --keep-bgr, our file records BGR: loading reverses it as for the original.
  kept = tmp_path / 'bgr.safetensors'
  assert weights.main(['convert', str(path), str(kept), '--keep-bgr']) == 0
  assert same_params(weights.load(kept)[1], rgb)
  assert same_params(weights.load(kept, bgr_to_rgb=False)[1], bgr)


@pytest.mark.parametrize('v1', [True, False], ids=['V1-layers', 'V2-layer'])
@pytest.mark.parametrize('name', ['bvlc', 'caffenet'])
def test_caffemodel_loads_bit_identical_to_the_onnx_path(tmp_path, zoo, caffe_weights, name, v1):
  path = tmp_path / f'{name}.caffemodel'
  path.write_bytes(files.caffemodel(caffe_weights, v1=v1, lrn_after_pool=name == 'caffenet'))
  model, variables = weights.load(path)
  onnx_model, onnx_variables = loaded(zoo[name, 9])
  assert model == onnx_model
  assert same_params(variables, onnx_variables)


def test_wire_reader_reads_what_the_onnx_package_reads(zoo):
  path = zoo['bvlc', 12]
  by_package = wf.read_onnx(str(path), use_package=True)
  by_wire = wf.read_onnx(str(path), use_package=False)
  assert by_wire.ops == by_package.ops and by_wire.bgr == by_package.bgr
  for layer in wf.LAYERS:
    for part in ('weight', 'bias'):
      np.testing.assert_array_equal(by_wire.tensors[layer][part], by_package.tensors[layer][part])


def test_class_count_comes_from_fc8(tmp_path, caffe_weights):
  rng = np.random.default_rng(3)  # a new fc8 on the module's weights: no second 61M draw
  tuned = {**caffe_weights, 'fc8': (rng.standard_normal((21, 4096), np.float32) * 0.02,
                                    np.zeros(21, np.float32))}
  path = tmp_path / 'tuned.onnx'
  onnx.save(files.zoo_graph(tuned, input_dims=(1, 3, 224, 224)), path)  # the zoo's declared input
  model, variables = weights.load(path)
  assert model.num_classes == 21 and variables['params']['fc8']['kernel'].shape == (4096, 21)


def test_pool_pads_that_change_the_output_are_reported(caffe_weights):
  model = model_lib.preset('bvlc')
  ops = weights.layer_plan(model)
  assert weights.plan_differences(ops, model) == []
  harmless = [wf.pool_op('maxpool', 3, 2, (0, 0, 1, 1)) if o.kind == 'maxpool' else o for o in ops]
  assert weights.plan_differences(harmless, model) == []  # the zoo's pads: never reached at 227
  shifted = [wf.pool_op('maxpool', 3, 2, (1, 1, 1, 1)) if o.kind == 'maxpool' else o for o in ops]
  differences = weights.plan_differences(shifted, model)
  assert differences and differences[0].startswith('maxpool after conv1')
  caffe_lrn = [wf.lrn_op(5, 2.0, 2e-5, 0.75, 1) if o.kind == 'lrn' else o for o in ops]
  assert 'k=2' in weights.plan_differences(caffe_lrn, model)[0]


# --------------------------------------------------------------------------------------------
# torchvision: torch.nn with its layer sequence, exported by torch.onnx, saved as state dicts
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def torchvision_files(tmp_path_factory):
  torch = pytest.importorskip('torch')
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp('torchvision')
  net = files.torchvision_alexnet(files.random_weights(files.TORCHVISION_CONVS, seed=5))
  images = rgb_images(224, seed=2) / 60.0  # torchvision's normalised scale
  with torch.no_grad():
    logits = net(torch.from_numpy(nchw(images).copy())).numpy()
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  torch.save(net.state_dict(), base / 'alexnet.pth')
  save_file(state, str(base / 'alexnet.safetensors'))
  torch.onnx.export(net, torch.zeros(1, 3, 224, 224), str(base / 'alexnet.onnx'), dynamo=False,
                    input_names=['input'], dynamic_axes={'input': {0: 'N'}})
  return base, images, logits, state


@pytest.mark.parametrize('kind', ['onnx', 'pth', 'safetensors'])
def test_torchvision_files_match_torch(torchvision_files, kind):
  base, images, torch_logits, _ = torchvision_files
  model, variables = loaded(base / f'alexnet.{kind}')
  assert weights.preset_of(model) == ('torchvision', {})
  assert_logits_close(our_logits(model, variables, images), torch_logits)
  if kind == 'onnx':
    path = base / 'alexnet.onnx'
    assert_logits_close(ort_run(path, nchw(images)), torch_logits)  # the export itself
    assert_logits_close(torch_logits[:1], ort_run(path, nchw(images[:1])))


# --------------------------------------------------------------------------------------------
# Round trips: our format, ONNX export
# --------------------------------------------------------------------------------------------
def test_our_format_round_trips_and_is_plain_safetensors(tmp_path, zoo):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  model, variables = loaded(zoo['caffenet', 9])
  path = tmp_path / 'caffenet.safetensors'
  weights.save(path, model, variables)
  again, reloaded = weights.load(path)
  assert again == model and same_params(reloaded, variables)
  # Another reader sees our layout under plain names.
  other = load_file(str(path))
  np.testing.assert_array_equal(other['fc6.kernel'], variables['params']['fc6']['kernel'])
  tuned = model_lib.preset('torchvision', num_classes=7)
  params = random_params(tuned)
  weights.save(tmp_path / 'tuned.safetensors', tuned, params)
  again, reloaded = weights.load(tmp_path / 'tuned.safetensors')
  assert again == tuned and same_params(reloaded, params)


@pytest.mark.parametrize('source', ['bvlc', 'torchvision', 'paper'])
def test_export_runs_in_onnx_runtime_with_our_logits(tmp_path, zoo, torchvision_files, source):
  if source == 'bvlc':
    model, variables = loaded(zoo['bvlc', 9])
  elif source == 'torchvision':
    model, variables = loaded(torchvision_files[0] / 'alexnet.safetensors')
  else:  # the paper's per-tower LRN: Split -> LRN -> Concat in ONNX
    model = model_lib.preset('paper')
    variables = random_params(model, seed=1)
  size = weights.input_size(model)
  images = rgb_images(size) / (60.0 if source == 'torchvision' else 1.0)
  path = tmp_path / f'{source}.onnx'
  weights.export_onnx(path, model, variables)
  ours = our_logits(model, variables, images)
  assert_logits_close(ort_run(path, nchw(images)), ours)
  assert_logits_close(ort_run(path, nchw(images[:1])), ours[:1])
  again, reloaded = weights.load(path)  # our export reads back as itself (RGB, same preset)
  assert again == model and same_params(reloaded, variables)


def _run_logits(workdir, step, images):
  """The tiny run's own network on ``images``, its params read without alexnet_jax.weights."""
  import tiny_config as tiny  # pylint: disable=g-import-not-at-top
  from alexnet_jax import trainer  # pylint: disable=g-import-not-at-top
  state, _ = tiny.restore_checkpoint(workdir, step)
  run_model = trainer.build_model(tiny.get_config(), tiny.NUM_CLASSES)
  return np.asarray(jax.jit(run_model.apply)({'params': state['params']}, images))


def test_a_runs_checkpoint_exports_to_onnx_at_its_crop(tmp_path_factory, tmp_path):
  """A run trained at a crop other than its preset's input (67, not 227) loads, and exports
  to an ONNX graph that takes its crop and gives the run's logits in ONNX Runtime."""
  import tiny_config as tiny  # pylint: disable=g-import-not-at-top
  workdir, _ = tiny.reference_run(tmp_path_factory)
  step = tiny.checkpoint_steps(workdir)[-1]
  assert weights.load(workdir)[0].num_classes == tiny.NUM_CLASSES  # the best (or latest) one
  model, variables, size, order = weights.load_network(
      os.path.join(workdir, 'checkpoints', str(step)))
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    crop = json.load(f)['data']['crop_size']
  assert size == crop == tiny.SMALLEST_CROP != weights.input_size(model) and order == 'RGB'
  path = tmp_path / 'run.onnx'
  with pytest.raises(ValueError, match="fc6's kernel.*pass the input_size"):
    weights.export_onnx(path, model, variables)  # at the preset's 227: fc6 does not fit
  assert not path.exists()
  weights.export_onnx(path, model, variables, input_size=size)
  assert _session(str(path)).get_inputs()[0].shape == ['N', 3, crop, crop]
  images = rgb_images(crop, n=2, seed=4)
  assert_logits_close(ort_run(path, nchw(images)), _run_logits(workdir, step, images))
  again = weights.load_network(path)  # the export records the size and reads back
  assert again.model == model and again.input_size == crop
  assert same_params(again.variables, variables)


def test_a_runs_weights_round_trip_through_our_format_with_their_size(tmp_path_factory,
                                                                       tmp_path, capsys):
  """``convert`` of a 67-px run writes its size into our safetensors; the file loads at that
  size, converts on to ONNX at it, and a recorded size fc6 does not fit is one clear error."""
  import tiny_config as tiny  # pylint: disable=g-import-not-at-top
  workdir, _ = tiny.reference_run(tmp_path_factory)
  ours, exported = tmp_path / 'run.safetensors', tmp_path / 'run.onnx'
  assert weights.main(['convert', workdir, str(ours)]) == 0
  assert f'input {tiny.SMALLEST_CROP}x{tiny.SMALLEST_CROP}' in capsys.readouterr().out
  tensors, metadata = wf.read_safetensors(str(ours))
  assert metadata['input_size'] == str(tiny.SMALLEST_CROP) and metadata['preset'] == 'paper'
  run = weights.load_network(workdir)
  loaded_back = weights.load_network(ours)
  assert loaded_back.model == run.model and loaded_back.input_size == tiny.SMALLEST_CROP
  assert same_params(loaded_back.variables, run.variables)
  assert weights.main(['convert', str(ours), str(exported)]) == 0
  images = rgb_images(tiny.SMALLEST_CROP, n=2, seed=5)
  assert_logits_close(ort_run(exported, nchw(images)),
                      our_logits(run.model, run.variables, images))
  wrong = tmp_path / 'wrong.safetensors'
  wf.write_safetensors(str(wrong), tensors, {**metadata, 'input_size': '227'})
  with pytest.raises(weights.WeightsError, match=r"fc6's kernel has shape \(256, 4096\) where "
                     r"the 'paper' preset needs \(9216, 4096\) at its recorded 227x227 input"):
    weights.load(wrong)


def _rewrite_json(path, change):
  with open(path, encoding='utf-8') as f:
    content = json.load(f)
  change(content)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(content, f)


def test_a_run_loads_the_network_its_checkpoint_records(tmp_path_factory, tmp_path):
  """A run's network and input size come from the checkpoint's own record, as a resume reads
  it: a config.json that names another network and crop (same shapes) changes nothing. A
  record without the crop takes config.json's, then the preset's (where fc6 of a 67-px run does
  not fit: the shape error). A checkpoint of a version before that record (no 'architecture'
  in its meta) takes both from config.json, and without a readable config.json is one clear
  error."""
  import tiny_config as tiny  # pylint: disable=g-import-not-at-top
  reference, _ = tiny.reference_run(tmp_path_factory)
  workdir = tiny.copy_workdir(reference, str(tmp_path / 'run'))  # small files are copies
  step = tiny.checkpoint_steps(workdir)[-1]
  step_dir = os.path.join(workdir, 'checkpoints', str(step))
  meta_path = os.path.join(step_dir, 'meta', 'metadata')
  state, _ = tiny.restore_checkpoint(workdir, step)
  config_path = os.path.join(workdir, 'config.json')
  other_crop = tiny.SMALLEST_CROP + 3  # conv1 still 15x15: the same shapes
  _rewrite_json(config_path, lambda c: (c['model'].update(preset='caffenet'),
                                        c['data'].update(crop_size=other_crop)))
  model, variables, size, _ = weights.load_network(step_dir)
  assert model == model_lib.preset('paper', num_classes=tiny.NUM_CLASSES)
  assert size == tiny.SMALLEST_CROP and same_params(variables['params'], state['params'])
  _rewrite_json(meta_path, lambda m: m['architecture'].pop('data.crop_size'))
  assert weights.load_network(step_dir)[2] == other_crop
  _rewrite_json(config_path, lambda c: c['data'].pop('crop_size'))
  with pytest.raises(weights.WeightsError, match="fc6's kernel has shape .* 'paper' preset needs"):
    weights.load(step_dir)
  _rewrite_json(config_path, lambda c: c['data'].update(crop_size=other_crop))
  _rewrite_json(meta_path, lambda m: m.pop('architecture'))
  old_model, old_variables, old_size, _ = weights.load_network(step_dir)
  assert old_model == model_lib.preset('caffenet', num_classes=tiny.NUM_CLASSES)
  assert old_size == other_crop and same_params(old_variables['params'], state['params'])
  os.remove(config_path)
  with pytest.raises(weights.WeightsError, match='did not record its network.*config.json'):
    weights.load(step_dir)


# --------------------------------------------------------------------------------------------
# Bad files: one clear line naming the file and the tensor; nothing written
# --------------------------------------------------------------------------------------------
def _bad_files(base, caffe_weights, zoo, torchvision_state):
  """{case: (path, words the error must contain)}."""
  good_onnx = zoo['bvlc', 9].read_bytes()
  good_caffe = files.caffemodel(caffe_weights, v1=True)
  # Structure errors come before shape checks: small fc layers keep these files small.
  small = files.random_weights(files.CAFFE_CONVS, fc=16, seed=8)
  extra = files.random_weights([(f'conv{6 + i}', 256, 256, 3, 1, 1, 1) for i in range(8)], seed=9)
  vgg_weights = {**small, **{k: v for k, v in extra.items() if k.startswith('conv')}}
  narrow = files.random_weights(files.CAFFE_CONVS, fc7_out=2048, seed=7)
  cases = {
      'truncated.caffemodel': (good_caffe[:len(good_caffe) // 2], ['truncated', "layer 'fc6' is cut off"]),
      'truncated.onnx': (good_onnx[:len(good_onnx) // 3], ['truncated', "initializer 'fc6_w_0' is cut off"]),
      'notes.onnx': (b'not a model at all\n', ['not a readable ONNX model']),
      'notes.caffemodel': (b'not a model at all\n', ['.caffemodel']),
      'notes.safetensors': (b'not a model at all\n', ['.safetensors']),
      'vgg.onnx': (files.zoo_graph(vgg_weights, extra_convs=8).SerializeToString(),
                   ['not an AlexNet', '13 convolutions', 'conv6_w_0']),
      'no_fc8.caffemodel': (files.caffemodel(small, v1=False, drop=('fc8',)),
                            ['no weights for fc8']),
      'fc7_2048.caffemodel': (files.caffemodel(narrow, v1=True), ['fc7', '2048']),
  }
  paths = {}
  for name, (content, words) in cases.items():
    (base / name).write_bytes(content)
    paths[name] = (base / name, words)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  state = dict(torchvision_state)
  state['classifier.4.weight'] = state['classifier.4.weight'][:2048]
  state['classifier.4.bias'] = state['classifier.4.bias'][:2048]
  save_file(state, str(base / 'fc7_2048.safetensors'))
  paths['fc7_2048.safetensors'] = (base / 'fc7_2048.safetensors', ["fc7's weight", '(2048, 4096)'])
  return paths


@pytest.fixture(scope='module')
def bad_files(tmp_path_factory, caffe_weights, zoo, torchvision_files):
  return _bad_files(tmp_path_factory.mktemp('bad'), caffe_weights, zoo, torchvision_files[3])


@pytest.mark.parametrize('case', ['truncated.caffemodel', 'truncated.onnx', 'notes.onnx',
                                  'notes.caffemodel', 'notes.safetensors', 'vgg.onnx',
                                  'no_fc8.caffemodel', 'fc7_2048.caffemodel',
                                  'fc7_2048.safetensors'])
def test_bad_file_is_one_error_line_and_writes_nothing(bad_files, tmp_path, capsys, case):
  path, words = bad_files[case]
  output = tmp_path / 'out.safetensors'
  assert weights.main(['convert', str(path), str(output)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f'error: {path}'), err
  for word in words:
    assert word in err[0], err[0]
  assert os.listdir(tmp_path) == []


def test_wrong_preset_says_what_differs(zoo, capsys):
  assert weights.main(['info', str(zoo['bvlc', 9]), '--preset', 'caffenet']) == 2
  err = capsys.readouterr().err
  assert "'caffenet' preset" in err and 'after conv1: the file has lrn' in err, err


def test_command_line_converts_and_describes(tmp_path, zoo):
  output = tmp_path / 'bvlc.safetensors'
  run = lambda *a: subprocess.run([sys.executable, '-m', 'alexnet_jax.weights', *a],
                                  capture_output=True, text=True, timeout=300,
                                  env=dict(os.environ, JAX_PLATFORMS='cpu'))
  result = run('convert', str(zoo['bvlc', 12]), str(output))
  assert result.returncode == 0, result.stderr
  assert "preset 'bvlc'" in result.stdout and 'fc8.kernel' in result.stdout
  assert '60,965,224' in result.stdout  # the paper's parameter count
  info = run('info', str(output))
  assert info.returncode == 0 and info.stdout.splitlines() == result.stdout.splitlines()[:-1]
