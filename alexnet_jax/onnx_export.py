"""An AlexNet layer plan (``alexnet_jax.weights.layer_plan``) as an ONNX graph (needs ``onnx``).

ReLU follows every conv and fc layer but fc8; an LRN with groups > 1 (the paper's per-tower
windows) becomes Split -> one LRN per group -> Concat, because ONNX's LRN runs over all
channels. ONNX's LRN divides its alpha by the window size (Caffe's convention), ours does not.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from alexnet_jax.weight_formats import Op, WeightsError

OPSET = 13


class _Builder:
  """Appends nodes one after another, each taking the previous node's output."""

  def __init__(self):
    self.nodes, self.initializers, self.last, self.count = [], [], 'images', 0

  def add(self, op_type: str, extra_inputs=(), outputs: int = 1, **attrs) -> list[str]:
    self.count += 1
    names = [f'{op_type.lower()}{self.count}_{i}' for i in range(outputs)]
    self.nodes.append(helper.make_node(op_type, [self.last, *extra_inputs], names,
                                       name=f'{op_type}_{self.count}', **attrs))
    self.last = names[0]
    return names

  def constant(self, name: str, array: np.ndarray) -> str:
    self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
    return name


def _lrn(b: _Builder, op: Op) -> None:
  size, groups = op.get('size'), op.get('groups')
  if size % 2 == 0:
    raise WeightsError(f'ONNX centres an LRN window of even size {size} differently from ours; '
                       'only odd sizes export.')
  attrs = dict(size=size, alpha=op.get('alpha') * size, beta=op.get('beta'), bias=op.get('k'))
  if groups == 1:
    b.add('LRN', **attrs)
    return
  parts = b.add('Split', outputs=groups, axis=1)
  normed = []
  for part in parts:
    b.last = part
    normed += b.add('LRN', **attrs)
  b.nodes.append(helper.make_node('Concat', normed, [f'concat{b.count}'], axis=1))
  b.last = f'concat{b.count}'


def build(plan: list[Op], tensors: dict[str, tuple[np.ndarray, np.ndarray]], size: int,
          metadata: dict[str, str]) -> onnx.ModelProto:
  """The graph of ``plan`` with ``tensors`` (``{layer: (weight in OIHW / (out, in), bias)}``)."""
  b = _Builder()
  convs = fcs = 0
  for op in plan:
    if op.kind == 'conv':
      convs += 1
      name = f'conv{convs}'
      pads = list(op.get('pads'))
      b.add('Conv', (b.constant(f'{name}_w', tensors[name][0]),
                     b.constant(f'{name}_b', tensors[name][1])),
            kernel_shape=[op.get('kernel')] * 2, strides=[op.get('stride')] * 2, pads=pads,
            group=op.get('groups'))
      b.add('Relu')
    elif op.kind == 'lrn':
      _lrn(b, op)
    elif op.kind == 'maxpool':
      b.add('MaxPool', kernel_shape=[op.get('kernel')] * 2, strides=[op.get('stride')] * 2)
    elif op.kind == 'fc':
      fcs += 1
      name = f'fc{5 + fcs}'
      if fcs == 1:
        b.add('Flatten', axis=1)  # NCHW: the CHW flatten the exported fc6 weight expects
      b.add('Gemm', (b.constant(f'{name}_w', tensors[name][0]),
                     b.constant(f'{name}_b', tensors[name][1])), transB=1)
      if fcs < 3:
        b.add('Relu')
    else:
      raise WeightsError(f'{op} has no ONNX export (export at the preset\'s input size).')
  b.nodes.append(helper.make_node('Identity', [b.last], ['logits'], name='logits'))
  classes = tensors['fc8'][1].shape[0]
  graph = helper.make_graph(
      b.nodes, 'alexnet_jax',
      [helper.make_tensor_value_info('images', TensorProto.FLOAT, ['N', 3, size, size])],
      [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['N', classes])],
      b.initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                            producer_name='alexnet_jax')
  helper.set_model_props(model, metadata)
  model.ir_version = min(model.ir_version, 8)  # readable by older ONNX Runtimes too
  onnx.checker.check_model(model)
  return model


def write(model: onnx.ModelProto, path: str) -> None:
  with open(path, 'wb') as f:
    f.write(model.SerializeToString())
