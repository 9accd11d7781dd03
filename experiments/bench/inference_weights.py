"""The inference benchmark's shared inputs, made once by a JAX process (``prepare``): random
weights for every framework, the ONNX graph, the PyTorch twin's options and reference logits."""

from __future__ import annotations

import json
import os

import numpy as np

from experiments.bench.inference import check_images

PARAMS_FILE, ONNX_FILE, META_FILE = 'params.npz', 'model.onnx', 'meta.json'


def random_params(model, input_size: int, seed: int) -> dict:
  """Weights N(0, 2 / fan_in), biases N(0, 0.1): activations keep their size through the
  layers, so that every layer (LRN included) matters in the logits that are compared."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  images = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)['params']
  rng = np.random.default_rng(seed)
  params = {}
  for name, leaves in shapes.items():
    shape = leaves['kernel'].shape
    std = np.float32(np.sqrt(2.0 / np.prod(shape[:-1])))
    params[name] = {'kernel': rng.standard_normal(shape, np.float32) * std,
                    'bias': rng.standard_normal(leaves['bias'].shape, np.float32) * 0.1}
  return params


def twin_options(model) -> dict:
  """``torch_twin.AlexNetTwin`` arguments that give ``model``'s network; error if it has none."""
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  if (tuple(model.conv_layers) != model_lib.CONV_LAYERS or model.avg_pool_size is not None
      or model.dropout_before_fc):
    # The command line refuses such presets first (inference.check_preset).
    raise ValueError('The PyTorch twin has the paper\'s layer table only.')
  return {'num_classes': model.num_classes, 'use_lrn': model.use_lrn,
          'lrn_after_pool': model.lrn_after_pool, 'lrn_groups': model.lrn_groups,
          'lrn_size': model.lrn_size, 'lrn_k': model.lrn_k, 'lrn_alpha': model.lrn_alpha,
          'lrn_beta': model.lrn_beta}


def export_onnx(path: str, model, params: dict) -> None:
  """The ONNX graph of ``model`` with ``params`` (NCHW input): the project's own exporter."""
  from alexnet_jax import weights  # pylint: disable=g-import-not-at-top
  weights.export_onnx(path, model, {'params': params})


def prepare(workdir: str, preset: str, batch_sizes, seed: int = 0, with_twin: bool = True) -> dict:
  """Writes the weights, the ONNX graph, the twin's options and the reference logits."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  model = model_lib.preset(preset)
  size = model_lib.PRESET_INPUTS[preset].input_size
  params = random_params(model, size, seed)
  np.savez(os.path.join(workdir, PARAMS_FILE),
           **{f'{layer}/{leaf}': value for layer, leaves in params.items()
              for leaf, value in leaves.items()})
  export_onnx(os.path.join(workdir, ONNX_FILE), model, params)
  # The reference: XLA's own implementations of every op (not the speed options under test).
  reference = jax.jit(model.clone(**model_lib.XLA_NATIVE_IMPLS).apply)
  for batch in batch_sizes:
    logits = reference({'params': params}, check_images(batch, size))
    np.save(os.path.join(workdir, f'reference_b{batch}.npy'), np.asarray(logits))
  meta = {'preset': preset, 'input_size': size, 'seed': seed,
          'twin': twin_options(model) if with_twin else None}
  with open(os.path.join(workdir, META_FILE), 'w', encoding='utf-8') as f:
    json.dump(meta, f)
  return meta


def load_meta(workdir: str) -> dict:
  with open(os.path.join(workdir, META_FILE), encoding='utf-8') as f:
    return json.load(f)


def load_params(workdir: str) -> dict:
  """The parameter tree of ``prepare`` as numpy arrays ({layer: {'kernel', 'bias'}})."""
  params = {}
  with np.load(os.path.join(workdir, PARAMS_FILE)) as data:
    for key in data.files:
      layer, leaf = key.split('/')
      params.setdefault(layer, {})[leaf] = data[key]
  return params
