"""Imported weights as a run's starting point (``config.init_from``) and their preprocessing.

A weights file fixes the network (its preset) and, through the preset, how images must be
prepared for the weights to mean anything: Caffe's models saw whole images warped to 256x256
with Caffe's mean pixel removed, torchvision's the shorter side resized to 256 and its mean and
std. :func:`resolve_config` writes that into a run's config; :func:`start_params` puts the
file's layers into a freshly initialised parameter tree, re-initialising only fc8 when the
run's class count differs from the file's.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

# Caffe's published numbers are on images warped to 256x256; the others keep the aspect ratio.
WARP_PRESETS = ('bvlc', 'caffenet')
CLASSIFIER = 'fc8'


def preset_name(model) -> str:
  """The name of the preset an ``AlexNet`` was built as ('paper', 'bvlc', ...)."""
  from alexnet_jax import weights  # pylint: disable=g-import-not-at-top
  return weights.preset_of(model)[0]


def preset_data_fields(name: str) -> dict[str, Any]:
  """The ``config.data`` values of a preset's published preprocessing."""
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  inputs = model_lib.PRESET_INPUTS[name]
  return {'preprocess': name, 'warp': name in WARP_PRESETS, 'resize_size': inputs.resize,
          'crop_size': inputs.input_size}


def load(path: str, record: dict | None = None):
  """``(model, convert)`` of ``config.init_from``, with errors that name the config field:
  the file's network, and a function that returns its parameters converted when called (a run
  that resumes from its own checkpoints never calls it).

  With ``record`` (the network a run's checkpoints record: a resume) the network is the
  record's and the file is not opened, unless ``convert`` is called.
  """
  from alexnet_jax import weights  # pylint: disable=g-import-not-at-top
  path = os.path.expanduser(path)
  if record is not None:
    return weights.model_of_record(record), lambda: load(path)[1]()
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.init_from: {path} does not exist; pass a weights file '
                            '(.caffemodel, .onnx, .pth, .safetensors or this project\'s own).')
  source = weights.read(path)
  model = weights.choose_model(source)
  return model, lambda: weights.to_params(source, model)


def resolve_config(config: ml_collections.ConfigDict, model) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the preset and preprocessing of the weights' ``model``.

  ``config.model.preset`` '' takes the file's; another preset than the file's is refused. The
  data fields that are still the paper's defaults (``data.preprocess`` '') take the preset's.
  """
  name = preset_name(model)
  wanted = config.model.preset
  if wanted and wanted != name:
    raise ValueError(f'config.model.preset is {wanted!r} but {config.init_from} holds a '
                     f'{name!r} network; set --config.model.preset={name} (or \'\').')
  from alexnet_jax import weights  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.preset = name
    # The file's network; the class count stays the config's (fc8 may change), and so does
    # the init scheme (it only starts that new fc8).
    config.model.update({f: getattr(model, f) for f in weights.ARCHITECTURE_FIELDS
                         if f not in ('num_classes', 'init_scheme')})
    if not config.data.preprocess:
      config.data.update(preset_data_fields(name))
  return config


def start_params(fresh: dict, loaded: dict, log=print) -> dict:
  """``fresh`` (an initialised tree) with every layer of ``loaded``; fc8 stays fresh when the
  class counts differ, and ``log`` says so. Any other mismatch is an error naming the layer."""
  merged = dict(fresh)
  for name, layer in fresh.items():
    source = loaded.get(name)
    shapes = {k: tuple(v.shape) for k, v in layer.items()}
    got = None if source is None else {k: tuple(v.shape) for k, v in source.items()}
    if got == shapes:
      merged[name] = {k: source[k].astype(layer[k].dtype) for k in layer}
    elif name == CLASSIFIER and got is not None:
      log(f'init_from: {CLASSIFIER} has {got["bias"][0]} classes in the file but '
          f'{shapes["bias"][0]} here: {CLASSIFIER} is re-initialised, every other layer loaded.')
    else:
      raise ValueError(f'config.init_from: layer {name} is {got} in the file but {shapes} in '
                       'the network; use weights of the same preset.')
  return merged
