"""Stand-ins for the public AlexNet weight files, written independently of alexnet_jax.

Random fan-in-scaled weights in Caffe's layouts; the ONNX model zoo's bvlcalexnet graph (its
node sequence and initializer names, built with onnx.helper); .caffemodel files in the V1
(``layers``) and current (``layer``) NetParameter formats (a tiny protobuf writer, field numbers
from caffe.proto); torchvision's AlexNet as plain torch.nn (its layer sequence exactly).
"""

from __future__ import annotations

import struct

import numpy as np

# (name, out, in per group, kernel, stride, pad, group) in Caffe's bvlc_alexnet.
CAFFE_CONVS = (('conv1', 96, 3, 11, 4, 0, 1), ('conv2', 256, 48, 5, 1, 2, 2),
               ('conv3', 384, 256, 3, 1, 1, 1), ('conv4', 384, 192, 3, 1, 1, 2),
               ('conv5', 256, 192, 3, 1, 1, 2))
TORCHVISION_CONVS = (('conv1', 64, 3, 11, 4, 2, 1), ('conv2', 192, 64, 5, 1, 2, 1),
                     ('conv3', 384, 192, 3, 1, 1, 1), ('conv4', 256, 384, 3, 1, 1, 1),
                     ('conv5', 256, 256, 3, 1, 1, 1))


def random_weights(convs, num_classes=1000, fc=4096, fc7_out=None, seed=0):
  """``{layer: (weight, bias)}`` in OIHW / (out, in), He-scaled so activations stay O(1)."""
  rng = np.random.default_rng(seed)
  shapes = [(name, (out, cin, k, k)) for name, out, cin, k, *_ in convs]
  fc7_out = fc7_out or fc
  shapes += [('fc6', (fc, convs[-1][1] * 36)), ('fc7', (fc7_out, fc)),
             ('fc8', (num_classes, fc7_out))]
  weights = {}
  for name, shape in shapes:
    fan_in = int(np.prod(shape[1:]))
    w = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))  # no float64
    weights[name] = (w, rng.uniform(-0.1, 0.1, shape[0]).astype(np.float32))
  return weights



def random_params(model, size: int, seed: int = 0) -> dict:
  """Params of ``model``'s shapes at a ``size`` x ``size`` input (our layouts), drawn in NumPy:
  kernels N(0, 2/fan_in), biases N(0, 0.1), so every layer matters for the logits. Far cheaper
  than ``model.init`` (eager, or one more compile, and JAX's slow CPU random bits for 61M
  values); the shapes come from ``jax.eval_shape``, which computes nothing."""
  import jax  # pylint: disable=g-import-not-at-top  (the file formats above need no JAX)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))['params']
  return jax.tree_util.tree_map(
      lambda s: rng.standard_normal(s.shape, np.float32) * np.float32(
          np.sqrt(2.0 / np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1), shapes)

# --------------------------------------------------------------------------------------------
# The ONNX model zoo's bvlcalexnet / caffenet graph
# --------------------------------------------------------------------------------------------
def zoo_graph(weights, lrn_after_pool=False, opset=9, input_dims=('N', 3, 227, 227),
              extra_convs=0):
  """The zoo's structure: ``data_0`` -> conv1_1 .. fc8_1 -> softmax, initializers
  ``conv1_w_0``/``conv1_b_0`` .., Caffe's LRN (size 5, alpha 1e-4, beta 0.75, bias 1), pooling
  pads [0, 0, 1, 1] (Caffe rounds pooling up), Reshape before fc6, Dropout after fc6/fc7. The
  logits (fc8's output) are a second graph output, for comparisons. ``extra_convs`` adds
  3x3 convolutions after conv5 (a VGG-like graph)."""
  from onnx import TensorProto, helper, numpy_helper  # pylint: disable=g-import-not-at-top
  nodes, inits, last = [], [], 'data_0'

  def node(op, name, inputs=(), **attrs):
    nonlocal last
    out = f'{name}_{len(nodes) + 1}'
    nodes.append(helper.make_node(op, [last, *inputs], [out], name=name, **attrs))
    last = out

  def const(name, array):
    inits.append(numpy_helper.from_array(np.asarray(array), name))
    return name

  lrn = dict(size=5, alpha=1e-4, beta=0.75, bias=1.0)
  pool = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
  convs = list(CAFFE_CONVS) + [(f'conv{6 + i}', 256, 256, 3, 1, 1, 1) for i in range(extra_convs)]
  for i, (name, _, _, k, stride, pad, group) in enumerate(convs):
    w, b = weights[name]
    node('Conv', name, (const(f'{name}_w_0', w), const(f'{name}_b_0', b)), kernel_shape=[k, k],
         strides=[stride] * 2, pads=[pad] * 4, group=group, dilations=[1, 1])
    node('Relu', f'relu{i + 1}')
    if i < 2:
      steps = [('MaxPool', f'pool{i + 1}', pool), ('LRN', f'norm{i + 1}', lrn)]
      for op, nm, attrs in (steps if lrn_after_pool else steps[::-1]):
        node(op, nm, **attrs)
  node('MaxPool', 'pool5', **pool)
  node('Reshape', 'OC2_DUMMY_0', (const('OC2_DUMMY_1', np.array([0, -1], np.int64)),))
  for i, name in enumerate(('fc6', 'fc7', 'fc8')):
    w, b = weights[name]
    node('Gemm', name, (const(f'{name}_w_0', w), const(f'{name}_b_0', b)), transB=1)
    logits = last
    if name != 'fc8':
      node('Relu', f'relu{6 + i}')
      node('Dropout', f'drop{6 + i}', **({'ratio': 0.5} if opset < 12 else {}))
  node('Softmax', 'prob' if opset < 12 else 'softmaxout')
  classes = weights['fc8'][1].shape[0]
  graph = helper.make_graph(
      nodes, 'bvlcalexnet', [helper.make_tensor_value_info('data_0', TensorProto.FLOAT,
                                                           list(input_dims))],
      [helper.make_tensor_value_info(last, TensorProto.FLOAT, [input_dims[0], classes]),
       helper.make_tensor_value_info(logits, TensorProto.FLOAT, [input_dims[0], classes])],
      inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)])
  model.ir_version = 7
  return model


# --------------------------------------------------------------------------------------------
# A protobuf writer and the .caffemodel formats
# --------------------------------------------------------------------------------------------
def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def varint_field(number: int, value: int) -> bytes:
  return _varint(number << 3) + _varint(value)


def bytes_field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def float_field(number: int, value: float) -> bytes:
  return _varint(number << 3 | 5) + struct.pack('<f', value)


def _blob(array: np.ndarray, legacy: bool) -> bytes:
  if legacy:  # num, channels, height, width: leading 1s for fewer dimensions
    dims = (1,) * (4 - array.ndim) + array.shape
    head = b''.join(varint_field(n + 1, d) for n, d in enumerate(dims))
  else:
    head = bytes_field(7, bytes_field(1, b''.join(_varint(d) for d in array.shape)))
  return head + bytes_field(5, np.ascontiguousarray(array, '<f4').tobytes())


_V1_TYPE = {'Convolution': 4, 'ReLU': 18, 'LRN': 15, 'Pooling': 17, 'InnerProduct': 14,
            'Dropout': 6, 'Softmax': 20}
# V2 / V1 field numbers: name, type, blobs, convolution_param, lrn_param, pooling_param
_FIELDS = {False: (1, 2, 7, 106, 118, 121), True: (4, 5, 6, 10, 18, 19)}


def _layer(v1, name, kind, blobs=(), param=b''):
  name_f, type_f, blobs_f, conv_f, lrn_f, pool_f = _FIELDS[v1]
  body = bytes_field(name_f, name.encode())
  body += varint_field(type_f, _V1_TYPE[kind]) if v1 else bytes_field(type_f, kind.encode())
  body += b''.join(bytes_field(blobs_f, _blob(b, legacy=v1)) for b in blobs)
  field = {'Convolution': conv_f, 'LRN': lrn_f, 'Pooling': pool_f}.get(kind)
  return body + (bytes_field(field, param) if field and param else b'')


def caffemodel(weights, v1: bool, lrn_after_pool=False, drop=()) -> bytes:
  """A NetParameter with the train_val net's layers and ``weights`` (layers in ``drop`` left
  out). V1 writes legacy 4-D blob shapes, as the 2014 model-zoo files have."""
  layers = []
  lrn = varint_field(1, 5) + float_field(2, 1e-4) + float_field(3, 0.75)
  pool = varint_field(1, 0) + varint_field(2, 3) + varint_field(3, 2)
  for i, (name, out, _, k, stride, pad, group) in enumerate(CAFFE_CONVS):
    conv = (varint_field(1, out) + varint_field(3, pad) + varint_field(4, k)
            + varint_field(5, group) + varint_field(6, stride))
    if name not in drop:
      layers.append(_layer(v1, name, 'Convolution', weights[name], conv))
    layers.append(_layer(v1, f'relu{i + 1}', 'ReLU'))
    if i < 2:
      steps = [_layer(v1, f'pool{i + 1}', 'Pooling', param=pool),
               _layer(v1, f'norm{i + 1}', 'LRN', param=lrn)]
      layers += steps if lrn_after_pool else steps[::-1]
  layers.append(_layer(v1, 'pool5', 'Pooling', param=pool))
  for name in ('fc6', 'fc7', 'fc8'):
    if name not in drop:
      layers.append(_layer(v1, name, 'InnerProduct', weights[name]))
  layers.append(_layer(v1, 'prob', 'Softmax'))
  net = bytes_field(1, b'AlexNet')
  return net + b''.join(bytes_field(2 if v1 else 100, layer) for layer in layers)


# --------------------------------------------------------------------------------------------
# torchvision's AlexNet in plain torch.nn
# --------------------------------------------------------------------------------------------
def torchvision_alexnet(weights):
  """torchvision.models.AlexNet's exact layer sequence (features, avgpool, classifier)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class AlexNet(nn.Module):
    def __init__(self, num_classes):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True),
          nn.MaxPool2d(3, 2),
          nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
          nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
      self.classifier = nn.Sequential(
          nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
          nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
          nn.Linear(4096, num_classes))

    def forward(self, x):
      return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

  net = AlexNet(weights['fc8'][1].shape[0]).eval()
  keys = {'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
          'conv4': 'features.8', 'conv5': 'features.10', 'fc6': 'classifier.1',
          'fc7': 'classifier.4', 'fc8': 'classifier.6'}
  state = {}
  for layer, key in keys.items():
    state[f'{key}.weight'] = torch.from_numpy(weights[layer][0].copy())
    state[f'{key}.bias'] = torch.from_numpy(weights[layer][1].copy())
  net.load_state_dict(state)
  return net
