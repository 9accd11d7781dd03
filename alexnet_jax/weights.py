"""Real AlexNet weights in and out: BVLC/Caffe, the ONNX model zoo, torchvision, our own runs.

    model, variables = alexnet_jax.weights.load('bvlc_alexnet.caffemodel')  # RGB input
    logits = model.apply(variables, alexnet_jax.model.preprocess('bvlc', images))
    alexnet_jax.weights.save('bvlc.safetensors', model, variables)     # our format
    alexnet_jax.weights.export_onnx('bvlc.onnx', model, variables)     # for ONNX Runtime

Formats (``load`` takes all; ``save`` writes ours, ``export_onnx`` ONNX):

* ``.caffemodel``: BVLC's bvlc_alexnet / bvlc_reference_caffenet, V1 (``layers``) or current
  (``layer``) NetParameter; read by :mod:`alexnet_jax.protowire`, no Caffe, no protoc.
* ``.onnx``: the model zoo's bvlcalexnet (opset 9 or 12), a torchvision export, our export;
  by the ``onnx`` package when installed, else by the same wire reader.
* ``.pth`` (torchvision state dict; needs torch) and ``.safetensors`` (a torchvision state dict,
  or our format: see :func:`save`).
* A run's workdir, its ``checkpoints/`` directory or one ``checkpoints/<step>``: the run's
  params (best checkpoint by validation error, else the latest) and the network the checkpoint
  records.

The network and layer sequence a file describes (convolution geometry, LRN constants and
placement, pooling, class count from fc8) are read from it and checked against the preset;
every tensor's shape is checked against the preset's at the input size the file records (a
run's crop; our files and exports record it), else at the preset's input size, and the first
that does not fit is named.
Errors a file can cause are :class:`WeightsError` (a ``ValueError``) with one sentence.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import model as model_lib
from alexnet_jax import weight_formats as wf
from alexnet_jax.weight_formats import LAYERS, Op, Source, WeightsError

# AlexNet fields that describe the network (saved with our format); the rest are speed options.
ARCHITECTURE_FIELDS = ('num_classes', 'dropout_rate', 'dropout_before_fc', 'conv_layers',
                       'avg_pool_size', 'use_lrn', 'lrn_after_pool', 'lrn_groups', 'lrn_size',
                       'lrn_k', 'lrn_alpha', 'lrn_beta', 'init_scheme')
FORMAT_NAME = 'alexnet_jax'


# --------------------------------------------------------------------------------------------
# Presets: which one a model is, its input size, its layer sequence
# --------------------------------------------------------------------------------------------
def _architecture(model: model_lib.AlexNet) -> dict[str, Any]:
  return {f: getattr(model, f) for f in ARCHITECTURE_FIELDS if hasattr(model, f)}


def _nearest_preset(fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
  """(the preset nearest ``fields``, the fields that differ from it); the first on a tie."""
  best = None
  for name in model_lib.PRESETS:
    theirs = _architecture(model_lib.preset(name))
    differ = {f: v for f, v in fields.items() if theirs.get(f) != v}
    if best is None or len(differ) < len(best[1]):
      best = (name, differ)
  return best


def preset_of(model: model_lib.AlexNet) -> tuple[str, dict[str, Any]]:
  """(the preset nearest ``model``, the fields that differ from it) over the network fields."""
  return _nearest_preset(_architecture(model))


def model_of_record(record: dict[str, Any], **overrides) -> model_lib.AlexNet:
  """The AlexNet a checkpoint's record of its network describes (its meta's ``architecture``:
  ``model.<field>`` -> value, as ``resume.architecture`` writes it): the nearest preset with
  the record's other values on top; the fields it does not record (the init scheme, the speed
  options) are the preset's, and ``overrides`` set any of them."""
  fields = {}
  for key, value in record.items():
    section, _, field = key.partition('.')
    if section == 'model':
      fields[field] = _from_json(field, value)
  known = {f.name for f in dataclasses.fields(model_lib.AlexNet)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise WeightsError(f'the checkpoint records the network field {unknown[0]!r}, which this '
                       'version of alexnet_jax does not know; load it with the version that '
                       'trained it.')
  name, differ = _nearest_preset(fields)
  return model_lib.preset(name, **{**differ, **overrides})


def input_size(model: model_lib.AlexNet, size: int | None = None) -> int:
  """``size``, the square input a network's weights were made for where it is known (a run's
  crop), else the one the model's preset takes (227, torchvision's 224)."""
  return size or model_lib.PRESET_INPUTS[preset_of(model)[0]].input_size


_side = input_size  # for the functions whose ``input_size`` argument hides it


def layer_plan(model: model_lib.AlexNet, size: int | None = None) -> list[Op]:
  """The model's layer sequence at input ``size`` (default: the preset's) as :class:`Op`
  values (what a file's graph is checked against and what :func:`export_onnx` writes). ReLUs
  and dropout are left out: every AlexNet has them in the same places and inference ignores
  dropout."""
  lrn = ([wf.lrn_op(model.lrn_size, model.lrn_k, model.lrn_alpha, model.lrn_beta,
                    model.lrn_groups)] if model.use_lrn else [])
  pool = [wf.pool_op('maxpool', model_lib.POOL_WINDOW, model_lib.POOL_STRIDE)]
  ops = []
  for name, features, kernel, stride, pad, groups in model.conv_layers:
    ops.append(wf.conv_op(features, kernel, stride, (pad,) * 4, groups))
    if name in model_lib.NORM_POOL_AFTER:
      ops += pool + lrn if model.lrn_after_pool else lrn + pool
  ops += pool
  pool5 = model_lib.feature_sides(input_size(model, size), model.conv_layers)['pool5']
  if model.avg_pool_size is not None and pool5 != model.avg_pool_size:
    ops.append(Op('avgpool', (('adaptive', model.avg_pool_size),)))
  fcs = [f for _, f in model_lib.FC_LAYERS] + [model.num_classes]
  return ops + [Op('fc', (('out', int(f)),)) for f in fcs]


def _pool_at(op: Op, size: int) -> tuple[Op, int]:
  """A pooling op as it acts at ``size``: padding that changes nothing (Caffe's round-up, the
  zoo's end pads, where the windows never reach them) is dropped. Returns (op, output size)."""
  k, s, pads, ceil = op.get('kernel'), op.get('stride'), op.get('pads'), op.get('ceil')
  rounding = math.ceil if ceil else math.floor
  out = int(rounding((size + pads[0] + pads[2] - k) / s)) + 1
  plain = (size - k) // s + 1
  if pads[0] == pads[1] == 0 and out == plain:
    return wf.pool_op(op.kind, k, s), plain
  return op, out


def _normalised(ops: list[Op], size: int) -> list[Op]:
  result = []
  for op in ops:
    if op.kind == 'conv':
      pads = op.get('pads')
      size = (size + pads[0] + pads[2] - op.get('kernel')) // op.get('stride') + 1
    elif op.kind in ('maxpool', 'avgpool') and op.get('kernel') is not None:
      op, size = _pool_at(op, size)
    result.append(op)
  return result


def _same(a: Op, b: Op) -> bool:
  if a.kind != b.kind or [k for k, _ in a.attrs] != [k for k, _ in b.attrs]:
    return False
  return all(np.isclose(x, y, rtol=1e-5, atol=0) if isinstance(x, float) else x == y
             for (_, x), (_, y) in zip(a.attrs, b.attrs))


def _labels(ops: list[Op]) -> list[str]:
  """conv1.. and fc6.. for those ops, 'after conv1' for the norm and pool ops that follow."""
  labels, last, convs, fcs = [], 'the input', 0, 0
  for op in ops:
    if op.kind in ('conv', 'fc'):
      convs, fcs = convs + (op.kind == 'conv'), fcs + (op.kind == 'fc')
      last = f'conv{convs}' if op.kind == 'conv' else f'fc{5 + fcs}'
      labels.append(last)
    else:
      labels.append(f'{op.kind} after {last}')
  return labels


def plan_differences(ops: list[Op], model: model_lib.AlexNet,
                     size: int | None = None) -> list[str]:
  """How a file's layer sequence differs from the model's (empty: none), at input ``size``
  (default: the preset's)."""
  mine = layer_plan(model, size)
  theirs = _normalised(ops, input_size(model, size))
  found = [f'{where}: the file has {a}, the preset {b}'
           for where, a, b in zip(_labels(mine), theirs, mine) if not _same(a, b)]
  if len(theirs) != len(mine):
    longer, who = (theirs, 'the file') if len(theirs) > len(mine) else (mine, 'the preset')
    found.append(f'{who} has {abs(len(theirs) - len(mine))} more step(s), from '
                 f'{longer[min(len(theirs), len(mine))]}')
  return found


def _num_classes(source: Source) -> int:
  oihw = source.layout == 'oihw'
  weight = source.tensors.get('fc8', {}).get('weight' if oihw else 'kernel')
  if weight is None or np.ndim(weight) != 2:
    raise WeightsError(f'{source.path}: no weights for fc8 (its kernel is missing or not 2-D).')
  return int(weight.shape[0] if oihw else weight.shape[1])


def choose_model(source: Source, preset: str | None = None, **overrides) -> model_lib.AlexNet:
  """The AlexNet a file describes: ``preset`` if given (checked), the file's own if it names
  one, else the first preset whose layer sequence the file's matches. The class count is the
  file's fc8's."""
  overrides = {**source.overrides, 'num_classes': _num_classes(source), **overrides}
  names = [preset or source.preset] if (preset or source.preset) else list(model_lib.PRESETS)
  if names[0] not in model_lib.PRESETS:
    raise WeightsError(f"unknown preset '{names[0]}'; use one of {', '.join(model_lib.PRESETS)}.")
  if source.ops is None:
    return model_lib.preset(names[0], **overrides)
  tried = []
  for name in names:
    model = model_lib.preset(name, **overrides)
    differences = plan_differences(source.ops, model, source.input_size)
    if not differences:
      return model
    tried.append((len(differences), name, differences))
  _, name, differences = min(tried)
  which = f"the '{name}' preset" if preset or len(names) == 1 else (
      f"any preset (nearest: '{name}')")
  raise WeightsError(f'{source.path}: the network does not match {which}: '
                     + '; '.join(differences[:3]) + '.')


# --------------------------------------------------------------------------------------------
# Layouts: the one place where tensors change layout (and are checked against the preset)
# --------------------------------------------------------------------------------------------
def expected_shapes(model: model_lib.AlexNet,
                    size: int | None = None) -> dict[str, dict[str, tuple]]:
  """``{layer: {'kernel': shape, 'bias': shape}}`` of the model's params at input ``size``
  (default: the preset's; fc6's input width follows it): shapes only, no compute."""
  size = input_size(model, size)
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)['params']
  return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)


def _fc6_map(expected) -> tuple[int, int]:
  """(channels, side) of the map fc6 flattens: conv5's channels, the rest square."""
  channels = expected['conv5']['kernel'][-1]
  return channels, math.isqrt(expected['fc6']['kernel'][0] // channels)


def _file_shape(name: str, ours: tuple) -> tuple:
  """Our kernel shape as Caffe/ONNX/PyTorch store it: OIHW, (out, in)."""
  return (ours[3], ours[2], ours[0], ours[1]) if len(ours) == 4 else (ours[1], ours[0])


def from_file_layout(name: str, weight: np.ndarray, expected, flip_bgr: bool,
                     layout: str = 'oihw') -> np.ndarray:
  """OIHW -> HWIO, (out, in) -> (in, out), fc6's CHW flatten -> HWC (layout 'oihw'; 'ours'
  is already ours), and conv1's input channels reversed with ``flip_bgr`` (BGR -> RGB)."""
  if name == 'conv1' and flip_bgr:
    return from_file_layout(name, weight, expected, False, layout)[:, :, ::-1, :]
  if layout == 'ours':
    return weight
  if weight.ndim == 4:
    return weight.transpose(2, 3, 1, 0)
  if name == 'fc6':
    channels, side = _fc6_map(expected)
    return weight.reshape(-1, channels, side, side).transpose(2, 3, 1, 0).reshape(
        channels * side * side, -1)
  return weight.T


def to_file_layout(name: str, kernel: np.ndarray, expected) -> np.ndarray:
  """The inverse of :func:`from_file_layout` (without the channel flip): for ONNX export."""
  if kernel.ndim == 4:
    return kernel.transpose(3, 2, 0, 1)
  if name == 'fc6':
    channels, side = _fc6_map(expected)
    return kernel.reshape(side, side, channels, -1).transpose(3, 2, 0, 1).reshape(
        -1, channels * side * side)
  return kernel.T


def to_params(source: Source, model: model_lib.AlexNet, bgr_to_rgb: bool = True) -> dict:
  """The file's tensors as ``model``'s params (float32 numpy), each shape checked (at the
  input size the file records, else the preset's)."""
  expected = expected_shapes(model, source.input_size)
  name_of = {'oihw': ('weight', 'bias'), 'ours': ('kernel', 'bias')}[source.layout]
  params = {}
  for layer in LAYERS:
    if layer not in source.tensors:
      raise WeightsError(f'{source.path}: no weights for {layer}.')
    params[layer] = {}
    for part, key in zip(('kernel', 'bias'), name_of):
      array = np.asarray(source.tensors[layer].get(key, np.zeros((0,))), np.float32)
      want = expected[layer][part]
      if source.layout == 'oihw' and part == 'kernel':
        want = _file_shape(layer, want)
      if array.shape != want:
        raise WeightsError(
            f"{source.path}: {layer}'s {key} has shape {array.shape} where the "
            f"'{preset_of(model)[0]}' preset needs {want}" + _at_size(source.input_size))
      if part == 'kernel':
        array = from_file_layout(layer, array, expected, source.bgr and bgr_to_rgb,
                                 source.layout)
      params[layer][part] = np.ascontiguousarray(array)
  return params


# --------------------------------------------------------------------------------------------
# Our format and a run's checkpoints
# --------------------------------------------------------------------------------------------
def _at_size(size: int | None) -> str:
  """The end of a shape error: the recorded input size the shapes were checked at."""
  return f' at its recorded {size}x{size} input.' if size else '.'


def _jsonable(value):
  return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _from_json(field: str, value):
  if field == 'conv_layers':
    return tuple(tuple(row) for row in value)
  return value


def _overrides(fields: dict[str, Any]) -> dict[str, Any]:
  return {f: _from_json(f, v) for f, v in fields.items() if f in ARCHITECTURE_FIELDS
          and v is not None}


def read_ours(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Source:
  """Our .safetensors: tensors ``conv1.kernel`` ... in our layout, the preset in the metadata."""
  try:
    overrides = _overrides(json.loads(metadata.get('overrides', '{}')))
  except json.JSONDecodeError:
    raise WeightsError(f"{path}: its 'overrides' metadata is not JSON.") from None
  layers = {}
  for name, array in tensors.items():
    layer, _, part = name.partition('.')
    layers.setdefault(layer, {})[part] = array
  return Source(path, 'alexnet_jax', layers, layout='ours', preset=metadata.get('preset'),
                overrides=overrides, bgr=metadata.get('channel_order') == 'BGR',
                input_size=wf.recorded_size(path, metadata.get('input_size')))


def run_dirs(path: str) -> tuple[str, str | None]:
  """(the run's workdir, the checkpoint step directory if ``path`` names one)."""
  path = os.path.abspath(path.rstrip(os.sep))
  parts = path.split(os.sep)
  if parts[-1] == 'state':
    path, parts = os.path.dirname(path), parts[:-1]
  if parts[-1].isdigit() and parts[-2] == 'checkpoints':
    return os.sep.join(parts[:-2]), path
  if parts[-1] == 'checkpoints':
    return os.path.dirname(path), None
  return path, None


def _restore_params(step_dir: str) -> dict:
  """The params of a checkpoint's ``state`` item, as numpy (any mesh it was saved on)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  item = os.path.join(step_dir, 'state')
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(item).item_metadata.tree
    args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(item, args=ocp.args.PyTreeRestore(restore_args=args))
  return state['params']


def _chosen_step_dir(path: str, workdir: str) -> str:
  """The checkpoint a workdir stands for: its best by validation error, else its latest."""
  from alexnet_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  if not checkpoint_lib.has_checkpoints(workdir):
    if os.path.exists(os.path.join(workdir, checkpoint_lib.CONFIG_FILE)):
      raise WeightsError(f'{path}: the run has no checkpoint yet.')
    raise WeightsError(f'{path}: no checkpoint in {workdir}: not a run of alexnet_jax (or not '
                       'a weight file of a known kind).')
  ckpts = checkpoint_lib.Checkpoints(workdir, async_save=False)
  step = ckpts.best_step() or ckpts.latest_step()
  ckpts.close()
  return checkpoint_lib.step_directory(workdir, step)


def _config_file(workdir: str) -> dict:
  """The run's config.json as a dict (OSError, ValueError if it cannot be read)."""
  from alexnet_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, checkpoint_lib.CONFIG_FILE), encoding='utf-8') as f:
    config = json.load(f)
  if not isinstance(config, dict):
    raise ValueError(f'{checkpoint_lib.CONFIG_FILE} is not a JSON object')
  return config


def _crop_size(config: dict) -> int | None:
  """A config.json's data.crop_size (None where it has none)."""
  crop = config.get('data', {}).get('crop_size')  # .get: any config.json, however old
  return int(crop) if crop else None


def _network_from_config_file(path: str, config: dict | None, error: str | None
                              ) -> tuple[str, dict[str, Any]]:
  """(preset, fields on top) of a checkpoint saved before checkpoints recorded their network in
  their meta: from the run's config.json (``config``, or the ``error`` reading it gave), the
  only record such a run has of it."""
  from alexnet_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  model_config = None if config is None else config.get('model')
  if model_config is None:
    raise WeightsError(f'{path}: the checkpoint is of a version that did not record its '
                       f'network, and the run\'s {checkpoint_lib.CONFIG_FILE} cannot be read '
                       f'({error or "KeyError"}); put it back.')
  # .get: config.json files older than config.model.preset lack it (the paper's network).
  return (model_config.get('preset') or 'paper',
          model_lib.changed_from_paper(_overrides(model_config)))


def _recorded_network(path: str, workdir: str, meta: dict
                      ) -> tuple[str, dict[str, Any], int | None]:
  """(preset, fields on top, input size) of a checkpoint: its meta's record of its network
  and crop; a record without the crop takes config.json's, else the preset's size. A meta
  without the record (checkpoints of earlier versions) takes both from config.json."""
  record = meta.get('architecture')
  if not isinstance(record, dict):
    record = None
  size = None if record is None else record.get('data.crop_size')
  config, error = None, None
  if size is None:  # config.json is read once, and only when the record lacks something
    try:
      config = _config_file(workdir)
    except (OSError, ValueError) as e:
      error = type(e).__name__
    size = None if config is None else _crop_size(config)  # None: the preset's
  if record is None:
    name, differ = _network_from_config_file(path, config, error)
  else:
    name, differ = preset_of(model_of_record(record))
  return name, differ, int(size) if size else None


def read_run(path: str) -> Source:
  """A run's params and network: ``path`` is its workdir, ``checkpoints/`` or
  ``checkpoints/<step>``; a workdir gives its best checkpoint by validation error (else the
  latest), as evaluation does. The network is the one the checkpoint records, as a resume
  reads it (:func:`model_of_record`), not the run's config.json; the input size is the run's
  crop (``input_size``), which fc6's shape follows."""
  from alexnet_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  workdir, step_dir = run_dirs(path)
  if step_dir is None:
    step_dir = _chosen_step_dir(path, workdir)
  try:
    meta = checkpoint_lib.read_meta(step_dir)
    params = _restore_params(step_dir)
  except Exception as e:  # pylint: disable=broad-except  (Orbax/tensorstore raise many kinds)
    raise WeightsError(f'{step_dir}: the checkpoint does not restore ({type(e).__name__}); '
                       'load another step.') from None
  name, differ, size = _recorded_network(path, workdir, meta)
  return Source(step_dir, 'checkpoint', params, layout='ours', preset=name, overrides=differ,
                input_size=size)


def read(path: str) -> Source:
  """Any supported file (by its extension) or run directory, unconverted."""
  if os.path.isdir(path):
    return read_run(path)
  if not os.path.exists(path):
    raise WeightsError(f'{path}: no such file or directory.')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.caffemodel':
    return wf.read_caffemodel(path)
  if ext == '.onnx':
    return wf.read_onnx(path)
  if ext in ('.pth', '.pt'):
    return wf.read_torch(path)
  if ext == '.safetensors':
    tensors, metadata = wf.read_safetensors(path)
    if metadata.get('format') == FORMAT_NAME:
      return read_ours(path, tensors, metadata)
    return wf.torchvision_source(path, 'safetensors', tensors)
  raise WeightsError(f'{path}: unknown kind of file; use a .caffemodel, .onnx, .pth, '
                     '.safetensors file or a run directory.')


# --------------------------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------------------------
class Network(NamedTuple):
  """A loaded network: what :func:`load_network` returns."""
  model: model_lib.AlexNet
  variables: dict  # {'params': ...}
  input_size: int  # the square input its weights were made for (a run's crop; else the preset's)
  channel_order: str  # of the input the params take: 'RGB', or 'BGR' (bgr_to_rgb=False)


def load_network(path: str, bgr_to_rgb: bool = True, preset: str | None = None,
                 **overrides) -> Network:
  """:func:`load`'s model and variables with the input size the weights were made for (what
  :func:`save`, :func:`export_onnx` and preprocessing need) and the input channel order."""
  source = read(os.fspath(path))
  model = choose_model(source, preset, **overrides)
  params = to_params(source, model, bgr_to_rgb)
  order = 'BGR' if source.bgr and not bgr_to_rgb else 'RGB'
  return Network(model, {'params': jax.tree_util.tree_map(jnp.asarray, params)},
                 input_size(model, source.input_size), order)


def load(path: str, bgr_to_rgb: bool = True, preset: str | None = None,
         **overrides) -> tuple[model_lib.AlexNet, dict]:
  """``(model, {'params': ...})`` from any supported file or a run's directory.

  ``model.apply(variables, images)`` gives the file's logits for NHWC images preprocessed as
  the preset says (``alexnet_jax.model.preprocess``). With ``bgr_to_rgb`` (the default) a
  Caffe/ONNX-zoo network takes RGB images (conv1's input channels reversed); with False the
  BGR order it was trained with. ``preset`` names the network the file must be (checked);
  ``overrides`` set other model fields (``dtype``, speed options). A run trained at another
  crop than its preset's input (and our files and exports of it) takes images of that size:
  :func:`load_network` says which.
  """
  return load_network(path, bgr_to_rgb, preset, **overrides)[:2]


def _numpy_params(variables) -> dict:
  params = variables['params'] if 'params' in variables else variables
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x), np.float32), params)


def _check_params(model, params, what: str, size: int | None) -> dict:
  """The model's expected shapes at input ``size``; a ValueError where ``params`` differ."""
  expected = expected_shapes(model, size)
  for layer in LAYERS:
    for part in ('kernel', 'bias'):
      shape = tuple(params[layer][part].shape)
      if shape != expected[layer][part]:
        side = input_size(model, size)
        raise ValueError(f"{what}: {layer}'s {part} has shape {shape} but the model's is "
                         f'{expected[layer][part]} at a {side}x{side} input; pass the '
                         'input_size the params were made for.')
  return expected


def _write_atomically(path: str, write) -> None:
  """``write(tmp_path)`` then rename: a failed write leaves nothing at ``path``."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(directory, f'.{os.path.basename(path)}.{os.getpid()}.tmp')
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save(path: str, model: model_lib.AlexNet, variables, channel_order: str = 'RGB',
         input_size: int | None = None) -> None:  # pylint: disable=redefined-outer-name
  """Writes our format: safetensors (float32, our layout, tensors ``conv1.kernel`` ...) with
  metadata ``format='alexnet_jax'``, ``preset``, ``overrides`` (JSON of the network fields
  that differ from the preset), ``channel_order`` (of the input the params take: 'RGB', or
  'BGR' for a Caffe network loaded with ``bgr_to_rgb=False``, which :func:`load` then reverses
  unless told not to) and ``input_size`` (the square input the params were made for: the
  argument, default the preset's; :func:`load_network` gives a run's). :func:`load` reads it
  with nothing but the base install."""
  params = _numpy_params(variables)
  _check_params(model, params, os.fspath(path), input_size)
  name, differ = preset_of(model)
  tensors = {f'{layer}.{part}': params[layer][part] for layer in LAYERS
             for part in ('kernel', 'bias')}
  metadata = {'format': FORMAT_NAME, 'preset': name, 'channel_order': channel_order,
              'overrides': json.dumps({f: _jsonable(v) for f, v in differ.items()}),
              'input_size': str(_side(model, input_size))}
  _write_atomically(path, lambda tmp: wf.write_safetensors(tmp, tensors, metadata))


def export_onnx(path: str, model: model_lib.AlexNet, variables, channel_order: str = 'RGB',
                input_size: int | None = None) -> None:  # pylint: disable=redefined-outer-name
  """Writes the model as an ONNX graph (opset 13) that ONNX Runtime runs (needs ``onnx``).

  Input ``images``: float32 NCHW ``(N, 3, S, S)``, S ``input_size`` (the square input the
  params were made for: default the preset's; :func:`load_network` gives a run's), in the
  channel order the params take (RGB after :func:`load`; ``channel_order`` records it in the
  graph's metadata, 'BGR' for params loaded with ``bgr_to_rgb=False``), preprocessed as the
  preset says; output ``logits`` ``(N, num_classes)`` (no softmax). The metadata names the
  preset and S.
  """
  try:
    from alexnet_jax import onnx_export  # pylint: disable=g-import-not-at-top  (needs onnx)
  except ImportError:
    raise WeightsError(f"{path}: exporting to ONNX needs the 'onnx' package: pip install "
                       "'alexnet_jax[onnx]'.") from None
  params = _numpy_params(variables)
  expected = _check_params(model, params, os.fspath(path), input_size)
  tensors = {layer: (to_file_layout(layer, params[layer]['kernel'], expected),
                     params[layer]['bias']) for layer in LAYERS}
  side = _side(model, input_size)
  proto = onnx_export.build(layer_plan(model, side), tensors, side,
                            {'alexnet_jax.preset': preset_of(model)[0],
                             'alexnet_jax.channel_order': channel_order,
                             'alexnet_jax.input_size': str(side)})
  _write_atomically(path, lambda tmp: onnx_export.write(proto, tmp))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def table(model: model_lib.AlexNet, variables, size: int | None = None) -> str:
  """The preset and input ``size`` (default: the preset's), then one line per tensor: name,
  shape, count, mean and std; then the total."""
  params = _numpy_params(variables)
  name, differ = preset_of(model)
  side = input_size(model, size)
  lines = [f"preset '{name}'" + (f', with {differ}' if differ else '') + f', input {side}x{side}',
           f"{'tensor':<12} {'shape':<20} {'count':>10} {'mean':>12} {'std':>12}"]
  total = 0
  for layer in LAYERS:
    for part in ('kernel', 'bias'):
      array = params[layer][part]
      total += array.size
      lines.append(f'{layer + "." + part:<12} {str(tuple(array.shape)):<20} {array.size:>10,} '
                   f'{array.mean():>12.5g} {array.std():>12.5g}')
  lines.append(f"{'total':<12} {'':<20} {total:>10,}")
  return '\n'.join(lines)


def _parse_args(argv: list[str]):
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog='python -m alexnet_jax.weights',
      description='Convert AlexNet weights (.caffemodel, .onnx, .pth, .safetensors, a run '
                  'directory) into our format (.safetensors) or ONNX (.onnx), or describe them.')
  commands = parser.add_subparsers(dest='command', required=True)
  convert = commands.add_parser('convert', help='IN -> OUT (.safetensors: ours; .onnx: ONNX)')
  convert.add_argument('source')
  convert.add_argument('output')
  info = commands.add_parser('info', help='the preset and per-tensor statistics of a file')
  info.add_argument('source')
  for p in (convert, info):
    p.add_argument('--preset', choices=list(model_lib.PRESETS),
                   help='the network the file must be (default: the one it matches)')
    p.add_argument('--keep-bgr', action='store_true',
                   help="keep a Caffe/ONNX-zoo network's BGR input (default: reverse to RGB)")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  try:
    writer = None
    if args.command == 'convert':
      writer = {'.onnx': export_onnx, '.safetensors': save}.get(
          os.path.splitext(args.output)[1].lower())
      if writer is None:
        raise WeightsError(f'{args.output}: write .safetensors (our format) or .onnx.')
    model, variables, size, order = load_network(args.source, not args.keep_bgr, args.preset)
    print(table(model, variables, size) + f'\ninput channel order {order}')
    if writer is not None:
      writer(args.output, model, variables, order, size)
      print(f'wrote {args.output}')
  except (WeightsError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
