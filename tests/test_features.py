"""Named activations (alexnet_jax.features) against the same tensors of ONNX graphs in ONNX Runtime.

Two references: the ONNX model zoo's bvlcalexnet graph as tests/weight_files.py builds it (by
hand, from Caffe's layer list, not by our exporter), loaded into our network with
alexnet_jax.weights; and, for every preset, our ONNX export. In both the intermediate tensors
(the ReLU outputs and the map fc6 flattens) are added as graph outputs and compared with
``features.extract`` under ``jax.jit``; ``jax.vmap`` over single images must give the same.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import features
from alexnet_jax import model as model_lib
from alexnet_jax import weights

import weight_files

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

BATCH = 2


def _taps(graph) -> dict[str, str]:
  """``{feature name: tensor name}``: the seven ReLU outputs in graph order (conv1..conv5,
  fc6, fc7) and the tensor that the Reshape/Flatten before fc6 takes (pool5)."""
  relus = [n.output[0] for n in graph.node if n.op_type == 'Relu']
  flatten = next(n for n in graph.node if n.op_type in ('Reshape', 'Flatten'))
  assert len(relus) == 7, [n.op_type for n in graph.node]
  names = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')
  return {**dict(zip(names, relus)), 'pool5': flatten.input[0]}


def _run_with_taps(proto, images_nchw: np.ndarray) -> dict[str, np.ndarray]:
  """ONNX Runtime on ``proto`` with every tap as an extra graph output."""
  taps = _taps(proto.graph)
  for tensor in taps.values():
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
  session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
  wanted = list(taps.values())
  values = session.run(wanted, {session.get_inputs()[0].name: images_nchw})
  return {name: value for name, value in zip(taps, values)}


def _compare(ours: dict, reference: dict) -> None:
  for name in features.FEATURE_NAMES:
    expected = reference[name]
    if expected.ndim == 4:  # NCHW -> our NHWC
      expected = expected.transpose(0, 2, 3, 1)
    got = np.asarray(ours[name])
    assert got.shape == expected.shape, name
    scale = np.abs(expected).max()
    assert scale > 0, name
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


def _images(size: int, seed: int = 0) -> np.ndarray:
  """Preprocessed-looking inputs: pixel-scale noise around zero (NHWC float32)."""
  return np.random.default_rng(seed).uniform(-120, 120, (BATCH, size, size, 3)).astype(
      np.float32)


def _jit_and_vmap(model, variables, images):
  """``features.extract`` under jit, and checks that ``jax.vmap`` over single images agrees."""
  # The variables are arguments, not constants folded into the compiled program.
  batched, mapped = jax.jit(lambda v, x: (features.extract(model, v, x), jax.vmap(
      lambda one: features.extract(model, v, one[None]))(x)))(variables, images)
  for name in features.FEATURE_NAMES:
    np.testing.assert_allclose(np.asarray(mapped[name])[:, 0], np.asarray(batched[name]),
                               rtol=1e-5, atol=1e-5 * float(np.abs(batched[name]).max()),
                               err_msg=name)
  return batched


@pytest.mark.parametrize('lrn_after_pool', [False, True], ids=['bvlc', 'caffenet'])
def test_taps_match_the_zoo_graph_in_onnx_runtime(tmp_path, lrn_after_pool):
  w = weight_files.random_weights(weight_files.CAFFE_CONVS, num_classes=10, seed=1)
  proto = weight_files.zoo_graph(w, lrn_after_pool=lrn_after_pool)
  path = str(tmp_path / 'bvlcalexnet.onnx')
  onnx.save(proto, path)
  model, variables = weights.load(path, bgr_to_rgb=False)  # feed the graph's own channels
  assert weights.preset_of(model)[0] == ('caffenet' if lrn_after_pool else 'bvlc')
  images = _images(227)
  ours = _jit_and_vmap(model, variables, images)
  _compare(ours, _run_with_taps(proto, images.transpose(0, 3, 1, 2)))


# The paper's network at an input whose pool5 map is 2x2, not 6x6: fc6's flatten order still
# matters, at a fraction of the compile and of fc6's size. torchvision's at its 224 (its adaptive
# pool exports only where it is the identity).
@pytest.mark.parametrize('name,size', [('paper', 99), ('torchvision', 224)])
def test_taps_match_our_onnx_export(tmp_path, name, size):
  model = model_lib.preset(name, num_classes=10)
  variables = {'params': weight_files.random_params(model, size, seed=2)}
  images = _images(size, seed=3)
  ours = _jit_and_vmap(model, variables, images)
  assert ours['pool5'].shape[1:3] == ((2, 2) if name == 'paper' else (6, 6))  # see above
  path = str(tmp_path / f'{name}.onnx')
  weights.export_onnx(path, model, variables, input_size=size)
  _compare(ours, _run_with_taps(onnx.load(path), images.transpose(0, 3, 1, 2)))


def test_plain_flax_and_errors():
  model = model_lib.preset('torchvision', num_classes=4)
  variables = {'params': weight_files.random_params(model, 64)}
  images = jnp.asarray(_images(64))
  # One compiled program for the three calls (eager AlexNet runs op by op, slowly).
  (logits, state), taps, plain = jax.jit(lambda v, x: (
      model.apply(v, x, mutable=['intermediates']),
      features.extract(model, v, x), model.apply(v, x)))(variables, images)
  np.testing.assert_array_equal(state['intermediates']['fc7_out'][0], taps['fc7'])
  np.testing.assert_array_equal(logits, plain)
  # What init makes (its shapes: no compute): params only, no intermediates.
  assert set(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))) == {
      'params'}
  with pytest.raises(ValueError, match="No feature named 'fc8'"):
    features.extract(model, variables, images, names=('fc8',))


def test_fc6_in_training_is_taken_before_dropout():
  # Dropout after the ReLU, as in the paper and Caffe (torchvision's layers, small and fast).
  model = model_lib.preset('torchvision', num_classes=4, dropout_before_fc=False)
  variables = {'params': weight_files.random_params(model, 64)}
  images = jnp.asarray(_images(64))
  train, test = jax.jit(lambda v, x: (  # one compiled program, as above
      features.extract(model, v, x, names=('fc6', 'fc7'), train=True,
                       rngs={'dropout': jax.random.key(1)}),
      features.extract(model, v, x, names=('fc6', 'fc7'))))(variables, images)
  np.testing.assert_allclose(train['fc6'], test['fc6'], rtol=1e-5, atol=1e-5)
  assert not np.allclose(train['fc7'], test['fc7'])  # fc7 saw fc6's dropped-out output
