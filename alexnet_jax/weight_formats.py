"""Readers of the AlexNet weight files people have: .caffemodel, .onnx, torchvision state dicts.

Each reader returns a :class:`Source`: the eight layers' tensors in the file's own layout (OIHW
kernels, (out, in) dense weights, fc6 over a CHW flatten: Caffe, ONNX and PyTorch all agree),
plus what the file says about the network (its layer sequence as :class:`Op` values, its input
channel order). ``alexnet_jax.weights`` turns a Source into our parameters, in one place.

Nothing here needs Caffe or protoc: .caffemodel files (and .onnx files when the ``onnx`` package
is not installed) are read with :mod:`alexnet_jax.protowire` from a memory map, so files of any
size load. The field numbers below are those of Caffe's ``caffe.proto`` and ONNX's
``onnx.proto``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from alexnet_jax import protowire as pw

LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')
CONVS, FCS = LAYERS[:5], LAYERS[5:]


class WeightsError(ValueError):
  """A weight file that cannot be used (unreadable, another network, a shape that does not fit).

  The message is one sentence naming the file (and the tensor, where one is at fault).
  """


@dataclasses.dataclass(frozen=True)
class Op:
  """One step of a network's layer sequence: ``kind`` ('conv', 'lrn', 'maxpool', 'avgpool',
  'fc', or an unknown op's type) and its attributes as ``(name, value)`` pairs."""
  kind: str
  attrs: tuple = ()

  def get(self, name: str, default=None):
    return dict(self.attrs).get(name, default)

  def __str__(self):
    inside = ', '.join(f'{k}={_short(v)}' for k, v in self.attrs)
    return f'{self.kind}({inside})'


def _short(value) -> str:
  return f'{value:.6g}' if isinstance(value, float) else str(value)


def conv_op(out: int, kernel: int, stride: int, pads, groups: int) -> Op:
  """pads: (top, left, bottom, right)."""
  return Op('conv', (('out', int(out)), ('kernel', int(kernel)), ('stride', int(stride)),
                     ('pads', tuple(int(p) for p in pads)), ('groups', int(groups))))


def lrn_op(size: int, k: float, alpha: float, beta: float, groups: int) -> Op:
  """Our LRN convention: ``alpha`` multiplies the window's sum of squares (Caffe/ONNX divide
  their alpha by ``size`` first). Rounded so that float32 attributes compare equal."""
  return Op('lrn', (('size', int(size)), ('k', float(np.float32(k))),
                    ('alpha', float(np.float32(alpha))), ('beta', float(np.float32(beta))),
                    ('groups', int(groups))))


def pool_op(kind: str, kernel: int, stride: int, pads=(0, 0, 0, 0), ceil: bool = False) -> Op:
  return Op(kind, (('kernel', int(kernel)), ('stride', int(stride)),
                   ('pads', tuple(int(p) for p in pads)), ('ceil', bool(ceil))))


@dataclasses.dataclass
class Source:
  """A weight file's contents before conversion.

  tensors: ``{layer: {'weight': array, 'bias': array}}``; layout: 'oihw' (Caffe, ONNX, PyTorch:
  OIHW kernels, (out, in) dense, CHW flatten before fc6) or 'ours' (already our contract).
  ops: the file's layer sequence when the file records it (else None). bgr: the file's network
  takes BGR input (Caffe's). preset/overrides: the AlexNet the file names (our own files).
  input_size: the square input the network's weights were made for, where the file records it
  (our own files and exports, a run's checkpoints: the run's crop); None: the preset's.
  """
  path: str
  kind: str
  tensors: dict[str, dict[str, np.ndarray]]
  layout: str = 'oihw'
  ops: list[Op] | None = None
  bgr: bool = False
  preset: str | None = None
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  input_size: int | None = None
  notes: list[str] = dataclasses.field(default_factory=list)


def _error(path: str, message: str) -> WeightsError:
  return WeightsError(f'{path}: {message}')


def _named_in_order(path: str, found: list[tuple[str, str, dict]], what: str
                    ) -> dict[str, dict[str, np.ndarray]]:
  """Name the file's conv and fc layers conv1..conv5, fc6..fc8 by their order in the file.

  found: ``(kind, file_name, tensors)`` with kind 'conv' or 'fc'. Another network (VGG has 13
  convolutions) or a missing layer is a WeightsError naming the first layer that does not fit.
  """
  convs = [f for f in found if f[0] == 'conv']
  fcs = [f for f in found if f[0] == 'fc']
  for have, names, kind in ((convs, CONVS, 'convolution'), (fcs, FCS, 'fully-connected layer')):
    if len(have) > len(names):
      raise _error(path, f"not an AlexNet: {what} has {len(have)} {kind}s where AlexNet has "
                   f"{len(names)} (the {len(names) + 1}th is '{have[len(names)][1]}').")
    if len(have) < len(names):
      raise _error(path, f'no weights for {names[len(have)]}: {what} has only {len(have)} '
                   f'{kind}s where AlexNet has {len(names)}.')
  return {name: f[2] for name, f in zip(LAYERS, convs + fcs)}


# --------------------------------------------------------------------------------------------
# .caffemodel (caffe.proto: NetParameter, LayerParameter, V1LayerParameter, BlobProto)
# --------------------------------------------------------------------------------------------
_V1_TYPES = {4: 'Convolution', 14: 'InnerProduct', 15: 'LRN', 17: 'Pooling', 18: 'ReLU'}
# field numbers:          name, type, blobs, convolution_param, lrn_param, pooling_param
_LAYER_FIELDS = {'layer': (1, 2, 7, 106, 118, 121), 'layers': (4, 5, 6, 10, 18, 19)}


def _blob(span: pw.Span) -> np.ndarray:
  """BlobProto: data (5, packed float) or double_data (8); shape (7: BlobShape.dim = 1) or the
  legacy num/channels/height/width (1..4)."""
  blob = span.message()
  shape_msg = pw.first(blob, 7)
  if shape_msg is not None:
    shape = tuple(pw.repeated_ints(shape_msg.message(), 1))
  else:
    shape = tuple(pw.first(blob, n, 1) for n in (1, 2, 3, 4))
  data = pw.repeated_floats(blob, 5)
  if not data.size and 8 in blob:
    data = pw.repeated_floats(blob, 8, '<f8').astype(np.float32)
  if data.size != math.prod(shape):
    raise pw.WireError(f'a blob of shape {shape} holds {data.size} values')
  return data.reshape(shape)


def _squeeze_legacy(array: np.ndarray, rank: int) -> np.ndarray:
  """Legacy 4-D blobs: an fc weight is (1, 1, out, in), a bias (1, 1, 1, out)."""
  while array.ndim > rank and array.shape[0] == 1:
    array = array[0]
  return array


def _caffe_op(kind: str, layer: dict, fields: tuple) -> Op:
  _, _, _, conv_f, lrn_f, pool_f = fields
  if kind == 'Convolution':
    p = pw.first(layer, conv_f).message() if conv_f in layer else {}
    # pad 3, kernel_size 4, stride 6 (or their _h forms: pad_h 9, kernel_h 11, stride_h 13)
    pad, kernel, stride = ((pw.repeated_ints(p, n) or pw.repeated_ints(p, h) or [default])[0]
                           for n, h, default in ((3, 9, 0), (4, 11, 0), (6, 13, 1)))
    return conv_op(pw.first(p, 1, 0), kernel, stride, (pad,) * 4, pw.first(p, 5, 1))
  if kind == 'LRN':  # ACROSS_CHANNELS (0) runs over all channels; WITHIN_CHANNEL is spatial.
    p = pw.first(layer, lrn_f).message() if lrn_f in layer else {}
    size = pw.first(p, 1, 5)
    return lrn_op(size, pw.float32(p, 5, 1.0), pw.float32(p, 2, 1.0) / size,
                  pw.float32(p, 3, 0.75), 1 if pw.first(p, 4, 0) == 0 else 0)
  p = pw.first(layer, pool_f).message() if pool_f in layer else {}
  pad = pw.first(p, 4, 0)
  # Caffe rounds pooling output sizes up.
  return pool_op('maxpool' if pw.first(p, 1, 0) == 0 else 'avgpool', pw.first(p, 2, 0),
                 pw.first(p, 3, 1), (pad,) * 4, ceil=True)


def read_caffemodel(path: str) -> Source:
  """A Caffe NetParameter, current (``layer``) or V1 (``layers``), by memory map."""
  data = pw.map_file(path)
  try:
    net = pw.read_message(data, partial=True)
    key = 'layer' if 100 in net else 'layers'
    fields = _LAYER_FIELDS[key]
    if 0 in net:
      cut = pw.cut_name(net, ((100 if key == 'layer' else 2, fields[0]),))
      raise pw.WireError(f"layer '{cut}' is cut off" if cut else str(net[0][0]))
    found, ops = [], []
    for span in net.get(100 if key == 'layer' else 2, []):
      layer = span.message()
      name = pw.text(layer, fields[0])
      kind = (pw.text(layer, fields[1]) if key == 'layer'
              else _V1_TYPES.get(pw.first(layer, fields[1], 0), 'other'))
      if kind in ('Convolution', 'LRN', 'Pooling'):
        ops.append(_caffe_op(kind, layer, fields))
      blobs = [_blob(b) for b in layer.get(fields[2], [])]
      if kind in ('Convolution', 'InnerProduct') and blobs:
        rank = 4 if kind == 'Convolution' else 2
        weight = _squeeze_legacy(blobs[0], rank)
        bias = (_squeeze_legacy(blobs[1], 1) if len(blobs) > 1
                else np.zeros(weight.shape[0], np.float32))
        if rank == 2:
          ops.append(Op('fc', (('out', int(weight.shape[0])),)))
        found.append(('conv' if rank == 4 else 'fc', name, {'weight': weight, 'bias': bias}))
  except pw.WireError as e:
    raise _error(path, f'not a readable .caffemodel (truncated or not a Caffe NetParameter: '
                 f'{e}).') from None
  if not found:
    raise _error(path, 'not a .caffemodel with weights (no convolution or inner-product '
                 'layer holds blobs).')
  return Source(path, 'caffemodel', _named_in_order(path, found, 'the net'), ops=ops, bgr=True)


# --------------------------------------------------------------------------------------------
# .onnx (onnx.proto: ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class OnnxGraph:
  """What we need of an ONNX model, whichever reader produced it."""
  nodes: list[tuple[str, list[str], list[str], dict[str, Any]]]  # (op, inputs, outputs, attrs)
  tensors: dict[str, np.ndarray]  # initializers and Constant nodes' values
  input_dims: tuple  # the first real input's declared dims (None where symbolic)
  metadata: dict[str, str]


_ONNX_DTYPES = {1: '<f4', 2: 'u1', 3: 'i1', 5: '<i2', 6: '<i4', 7: '<i8', 10: '<f2', 11: '<f8'}


def _wire_tensor(span: pw.Span) -> tuple[str, np.ndarray]:
  t = span.message()
  dims = tuple(pw.signed(d) for d in pw.repeated_ints(t, 1))
  dtype = _ONNX_DTYPES.get(pw.first(t, 2, 1))
  if dtype is None or pw.first(t, 14, 0) == 1:
    raise pw.WireError('a tensor of an unsupported type or with external data (install the '
                       "'onnx' package to read it)")
  if 9 in t:
    raw = pw.first(t, 9)
    values = np.frombuffer(raw.data, dtype, (raw.end - raw.start) // np.dtype(dtype).itemsize,
                           raw.start)
  elif 4 in t:
    values = pw.repeated_floats(t, 4)
  elif 10 in t:
    values = pw.repeated_floats(t, 10, '<f8')
  else:  # int32_data (5) or int64_data (7), packed or not
    values = np.array([pw.signed(v) for v in pw.repeated_ints(t, 7 if 7 in t else 5)], dtype)
  if values.size != math.prod(dims):
    raise pw.WireError(f'a tensor of shape {dims} holds {values.size} values')
  return pw.text(t, 8), values.astype(dtype, copy=False).reshape(dims)


def _wire_attribute(span: pw.Span) -> tuple[str, Any]:
  a = span.message()
  kind = pw.first(a, 20, 0)
  if kind == 1 or (not kind and 2 in a):
    value = pw.float32(a, 2, 0.0)
  elif kind == 2 or (not kind and 3 in a):
    value = pw.signed(pw.first(a, 3, 0))
  elif kind == 3 or (not kind and 4 in a):
    value = pw.first(a, 4).bytes()
  elif kind == 4 or (not kind and 5 in a):
    value = _wire_tensor(pw.first(a, 5))[1]
  elif kind == 6 or (not kind and 7 in a):
    value = [float(v) for v in pw.repeated_floats(a, 7)]
  elif kind == 7 or (not kind and 8 in a):
    value = [pw.signed(v) for v in pw.repeated_ints(a, 8)]
  else:
    value = None  # graphs, strings lists: nothing AlexNet uses
  return pw.text(a, 1), value


def _wire_input_dims(graph: dict, tensors: dict) -> tuple:
  for span in graph.get(11, []):
    info = span.message()
    if pw.text(info, 1) in tensors:
      continue
    shape = {}
    if 2 in info and 1 in (tp := pw.first(info, 2).message()):
      tensor_type = pw.first(tp, 1).message()
      shape = pw.first(tensor_type, 2).message() if 2 in tensor_type else {}
    dims = [d.message() for d in shape.get(1, [])]
    return tuple(pw.first(d, 1) if 1 in d else None for d in dims)
  return ()


def _onnx_by_wire(path: str) -> OnnxGraph:
  model = pw.read_message(pw.map_file(path))
  if 7 not in model:
    raise pw.WireError('no graph')
  graph = pw.first(model, 7).message()
  tensors = dict(_wire_tensor(s) for s in graph.get(5, []))
  nodes = []
  for span in graph.get(1, []):
    n = span.message()
    attrs = dict(_wire_attribute(a) for a in n.get(5, []))
    nodes.append((pw.text(n, 4), [s.text() for s in n.get(1, [])],
                  [s.text() for s in n.get(2, [])], attrs))
  metadata = {}
  for span in model.get(14, []):
    entry = span.message()
    metadata[pw.text(entry, 1)] = pw.text(entry, 2)
  return OnnxGraph(nodes, tensors, _wire_input_dims(graph, tensors), metadata)


def _onnx_by_package(path: str) -> OnnxGraph:
  import onnx  # pylint: disable=g-import-not-at-top  (optional extra)
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  model = onnx.load(path)
  graph = model.graph
  tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  nodes = []
  for n in graph.node:
    attrs = {}
    for a in n.attribute:
      value = onnx.helper.get_attribute_value(a)
      attrs[a.name] = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
    nodes.append((n.op_type, list(n.input), list(n.output), attrs))
  dims = ()
  for info in graph.input:
    if info.name not in tensors:
      dims = tuple(d.dim_value if d.HasField('dim_value') else None
                   for d in info.type.tensor_type.shape.dim)
      break
  return OnnxGraph(nodes, tensors, dims, {p.key: p.value for p in model.metadata_props})


def read_onnx_graph(path: str, use_package: bool | None = None) -> OnnxGraph:
  """The graph by the ``onnx`` package when installed (or ``use_package``), else by wire."""
  if use_package is None:
    try:
      import onnx  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      use_package = True
    except ImportError:
      use_package = False
  try:
    return _onnx_by_package(path) if use_package else _onnx_by_wire(path)
  except Exception as e:  # pylint: disable=broad-except  (protobuf's DecodeError and kin)
    if not isinstance(e, ValueError) and type(e).__name__ not in ('DecodeError',
                                                                  'ValidationError'):
      raise
    where = _onnx_cut(path)
    raise _error(path, f'not a readable ONNX model (truncated or not ONNX: '
                 f'{where or str(e) or type(e).__name__}).') from None


def _onnx_cut(path: str) -> str | None:
  """Where a truncated ONNX file breaks off: the initializer or node it ends inside."""
  model = pw.read_message(pw.map_file(path), partial=True)
  for what, field, name_field in (('initializer', 5, 8), ('node', 1, 3)):
    name = pw.cut_name(model, ((7, 2), (field, name_field)))
    if name:
      return f"{what} '{name}' is cut off"
  return None


# Ops that only move or reshape data (or act only in training): not part of the comparison.
_PASSIVE_OPS = frozenset({'Relu', 'Dropout', 'Reshape', 'Flatten', 'Softmax', 'Identity',
                          'Constant', 'Shape', 'Gather', 'Unsqueeze', 'Squeeze', 'Concat',
                          'Cast', 'Split', 'Transpose'})


def _onnx_conv(node, tensors) -> tuple[Op, dict]:
  _, inputs, _, attrs = node
  weight = np.asarray(tensors[inputs[1]], np.float32)
  bias = (np.asarray(tensors[inputs[2]], np.float32) if len(inputs) > 2 and inputs[2]
          else np.zeros(weight.shape[0], np.float32))
  strides = attrs.get('strides', [1, 1])
  pads = tuple(attrs.get('pads', [0, 0, 0, 0]))
  if attrs.get('auto_pad', b'NOTSET') not in (b'NOTSET', 'NOTSET') or strides[0] != strides[1]:
    return Op('conv', (('unsupported', f"auto_pad/strides {attrs}"),)), {}
  op = conv_op(weight.shape[0], weight.shape[2], strides[0], pads, attrs.get('group', 1))
  return op, {'weight': weight, 'bias': bias}


def _onnx_dense(node, tensors, graph_nodes) -> dict:
  """Gemm (B transposed or not, alpha/beta folded in) or MatMul (+ the Add of its bias)."""
  op, inputs, outputs, attrs = node
  b = np.asarray(tensors[inputs[1]], np.float32)
  if op == 'MatMul':
    weight = b.T
    bias = np.zeros(weight.shape[0], np.float32)
    for other in graph_nodes:  # the Add that takes the product and a constant
      if other[0] == 'Add' and outputs[0] in other[1]:
        rest = [n for n in other[1] if n != outputs[0]]
        if rest and rest[0] in tensors:
          bias = np.asarray(tensors[rest[0]], np.float32).reshape(-1)
        break
    return {'weight': weight, 'bias': bias}
  weight = (b if attrs.get('transB', 0) else b.T) * np.float32(attrs.get('alpha', 1.0))
  bias = (np.asarray(tensors[inputs[2]], np.float32).reshape(-1) * np.float32(attrs.get('beta', 1.0))
          if len(inputs) > 2 and inputs[2] else np.zeros(weight.shape[0], np.float32))
  return {'weight': weight, 'bias': bias}


def _onnx_pool(node) -> Op | None:
  op, _, _, attrs = node
  if op == 'GlobalAveragePool':
    return Op('avgpool', (('global', True),))
  kernel, strides = attrs.get('kernel_shape', [1, 1]), attrs.get('strides', [1, 1])
  pads = tuple(attrs.get('pads', [0, 0, 0, 0]))
  kind = 'maxpool' if op == 'MaxPool' else 'avgpool'
  if kind == 'avgpool' and list(kernel) == [1, 1] and list(strides) == [1, 1] and not any(pads):
    return None  # the identity (an adaptive pool exported where the map has the size already)
  return pool_op(kind, kernel[0], strides[0], pads, bool(attrs.get('ceil_mode', 0)))


def onnx_ops_and_layers(path: str, g: OnnxGraph) -> tuple[list[Op], dict]:
  """The graph's layer sequence and its conv/fc tensors (named conv1.. fc8 by order).

  LRNs on the outputs of one Split (our export of per-tower LRN) count as one LRN with that
  many groups.
  """
  ops, found, lrn_splits = [], [], set()
  split_of = {out: i for i, n in enumerate(g.nodes) if n[0] == 'Split' for out in n[2]}
  for node in g.nodes:
    op, inputs, _, attrs = node
    if op == 'Conv':
      conv, tensors = _onnx_conv(node, g.tensors)
      ops.append(conv)
      found.append(('conv', inputs[1], tensors))
    elif op in ('Gemm', 'MatMul') and len(inputs) > 1 and inputs[1] in g.tensors:
      dense = _onnx_dense(node, g.tensors, g.nodes)
      ops.append(Op('fc', (('out', int(dense['weight'].shape[0])),)))
      found.append(('fc', inputs[1], dense))
    elif op == 'LRN':
      split = split_of.get(inputs[0])
      if split is not None:
        if split in lrn_splits:
          continue
        lrn_splits.add(split)
      groups = len(g.nodes[split][2]) if split is not None else 1
      size = int(attrs.get('size', 5))
      ops.append(lrn_op(size, attrs.get('bias', 1.0), attrs.get('alpha', 1e-4) / size,
                        attrs.get('beta', 0.75), groups))
    elif op in ('MaxPool', 'AveragePool', 'GlobalAveragePool'):
      pool = _onnx_pool(node)
      if pool is not None:
        ops.append(pool)
    elif op not in _PASSIVE_OPS and op != 'Add':
      ops.append(Op(op))
  return ops, _named_in_order(path, found, 'the graph')


def read_onnx(path: str, use_package: bool | None = None) -> Source:
  """An ONNX AlexNet: the model zoo's bvlcalexnet, a torchvision export, or our own export.

  Channel order: our exports say RGB in their metadata; other files with Caffe's LRN (the zoo's
  bvlcalexnet) take BGR as Caffe did; the rest (torchvision's) RGB.
  """
  g = read_onnx_graph(path, use_package)
  ops, named = onnx_ops_and_layers(path, g)
  order = g.metadata.get('alexnet_jax.channel_order')
  bgr = order == 'BGR' if order else any(o.kind == 'lrn' for o in ops)
  notes = [f'declared input {g.input_dims}'] if g.input_dims else []
  return Source(path, 'onnx', named, ops=ops, bgr=bgr,
                preset=g.metadata.get('alexnet_jax.preset'), notes=notes,
                input_size=recorded_size(path, g.metadata.get('alexnet_jax.input_size')))


def recorded_size(path: str, text: str | None) -> int | None:
  """The input size a file's metadata records (None when it records none), checked."""
  if text is None:
    return None
  if not text.isdigit() or int(text) < 1:
    raise _error(path, f'its recorded input size {text!r} is not a positive whole number.')
  return int(text)


# --------------------------------------------------------------------------------------------
# torchvision state dicts (.pth, .safetensors) and the safetensors format itself
# --------------------------------------------------------------------------------------------
# torchvision's alexnet: nn.Sequential indices of its conv and linear layers.
TORCHVISION_KEYS = {'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
                    'conv4': 'features.8', 'conv5': 'features.10', 'fc6': 'classifier.1',
                    'fc7': 'classifier.4', 'fc8': 'classifier.6'}
_SAFETENSORS_DTYPES = {'F32': '<f4', 'F16': '<f2', 'F64': '<f8', 'BF16': '<u2'}


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors as float32 numpy arrays, the ``__metadata__`` strings) of a .safetensors file.

  The format: an 8-byte little-endian header length, a JSON header
  ``{name: {dtype, shape, data_offsets}}``, then the data. Read by memory map; no torch.
  """
  import json  # pylint: disable=g-import-not-at-top
  data = pw.map_file(path)
  try:
    size = int(np.frombuffer(data, '<u8', 1, 0)[0]) if len(data) >= 8 else -1
    if size < 2 or 8 + size > len(data):
      raise ValueError('no safetensors header')
    header = json.loads(bytes(data[8:8 + size]))
    metadata = header.pop('__metadata__', None) or {}
    tensors = {}
    for name, entry in header.items():
      dtype = _SAFETENSORS_DTYPES.get(entry['dtype'])
      if dtype is None:
        raise ValueError(f"tensor '{name}' has the unsupported dtype {entry['dtype']}")
      begin, end = entry['data_offsets']
      if 8 + size + end > len(data) or end - begin != math.prod(entry['shape']) * np.dtype(dtype).itemsize:
        raise ValueError(f"tensor '{name}' runs past the end of the file")
      raw = np.frombuffer(data, dtype, (end - begin) // np.dtype(dtype).itemsize, 8 + size + begin)
      if entry['dtype'] == 'BF16':  # bfloat16 is the top half of a float32
        raw = (raw.astype('<u4') << 16).view('<f4')
      tensors[name] = raw.astype(np.float32, copy=False).reshape(entry['shape'])
  except (ValueError, KeyError, TypeError) as e:
    raise _error(path, f'not a readable .safetensors file (truncated or another format: {e}).'
                 ) from None
  return tensors, metadata


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
  """Writes float32 ``tensors`` in the safetensors format (see :func:`read_safetensors`)."""
  import json  # pylint: disable=g-import-not-at-top
  header, offset = {'__metadata__': metadata}, 0
  arrays = {name: np.ascontiguousarray(t, '<f4') for name, t in tensors.items()}
  for name, a in arrays.items():
    header[name] = {'dtype': 'F32', 'shape': list(a.shape), 'data_offsets': [offset, offset + a.nbytes]}
    offset += a.nbytes
  encoded = json.dumps(header, separators=(',', ':')).encode()
  encoded += b' ' * (-len(encoded) % 8)  # the data starts 8-byte aligned
  with open(path, 'wb') as f:
    f.write(np.uint64(len(encoded)).tobytes() + encoded)
    for a in arrays.values():
      f.write(a.tobytes())


def torchvision_source(path: str, kind: str, state: dict[str, np.ndarray]) -> Source:
  """A torchvision ``alexnet`` state dict (keys ``features.0.weight`` ...)."""
  state = {k.removeprefix('module.'): v for k, v in state.items()}
  tensors = {}
  for layer, key in TORCHVISION_KEYS.items():
    for part in ('weight', 'bias'):
      if f'{key}.{part}' not in state:
        raise _error(path, f"no tensor '{key}.{part}' ({layer}'s {part}): not a torchvision "
                     'AlexNet state dict.')
    tensors[layer] = {p: np.asarray(state[f'{key}.{p}'], np.float32) for p in ('weight', 'bias')}
  extra = sorted(set(state) - {f'{k}.{p}' for k in TORCHVISION_KEYS.values()
                               for p in ('weight', 'bias')})
  if extra:
    raise _error(path, f"not a torchvision AlexNet: it has the tensor '{extra[0]}', which "
                 'AlexNet does not.')
  return Source(path, kind, tensors, preset='torchvision')


def read_torch(path: str) -> Source:
  """A torchvision state dict saved with ``torch.save`` (needs the ``compare`` extra: torch)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional extra)
  except ImportError:
    raise _error(path, "reading .pth files needs torch: pip install 'alexnet_jax[compare]' (or "
                 'convert the file to .safetensors where torch is installed).') from None
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (torch raises many kinds here)
    raise _error(path, f'not a readable PyTorch file ({type(e).__name__}: '
                 f'{str(e).splitlines()[0][:160] if str(e) else ""}).') from None
  if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
    state = state['state_dict']
  if not isinstance(state, dict):
    raise _error(path, f'holds a {type(state).__name__}, not a state dict.')
  return torchvision_source(path, 'pth', {k: v.detach().float().numpy() for k, v in state.items()
                                          if hasattr(v, 'detach')})
