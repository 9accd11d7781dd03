"""The model's own layers, taken from a traced call of ``AlexNet``: what the profiles time.

The benchmark builds no convolution of its own: it records the conv and dense modules that
``AlexNet.__call__`` creates (with the implementation options the model chose for them) and
their input and output shapes, and applies those modules. LRN and pooling run through the
model's kernels (``alexnet_jax.ops``) with the model's own constants and resolved options.
"""

from __future__ import annotations

from collections.abc import Callable


def capture_layers(model, batch: int) -> dict[str, tuple]:
  """name -> (module, input shape, output shape) of each weighted layer the model calls.

  The modules are unbound copies of the ones the model builds (``module.apply({'params':
  {'kernel': ..., 'bias': ...}}, x)`` runs them); shapes include the batch.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  found = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if (context.method_name == '__call__' and module.name in model_lib.LAYER_NAMES
        and module.name not in found):
      found[module.name] = (module.clone(parent=None), args[0].shape, out.shape)
    return out

  images = jax.ShapeDtypeStruct((batch, 227, 227, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), images)
  return found


def _pooled(shape: tuple) -> tuple:
  from alexnet_jax.model import pool_side  # pylint: disable=g-import-not-at-top
  n, h, w, c = shape
  return (n, pool_side(h), pool_side(w), c)


def block_shapes(model, batch: int) -> dict[str, tuple]:
  """Input shape (batch included) of every block of the forward pass, in the model's order."""
  layers = capture_layers(model, batch)
  shapes = {}
  for index in (1, 2):
    out = layers[f'conv{index}'][2]
    shapes[f'conv{index}'] = layers[f'conv{index}'][1]
    if model.lrn_after_pool:
      shapes.update({f'pool{index}': out, f'norm{index}': _pooled(out)})
    else:
      shapes.update({f'norm{index}': out, f'pool{index}': out})
  for name in ('conv3', 'conv4', 'conv5'):
    shapes[name] = layers[name][1]
  shapes['pool5'] = layers['conv5'][2]
  for name in ('fc6', 'fc7'):
    shapes[name] = layers[name][1]
  shapes['fc8+loss'] = layers['fc8'][1]
  return shapes


def lrn_fn(model) -> Callable:
  """The model's LRN (its constants, tower groups and implementation) as a function."""
  from alexnet_jax.ops import lrn  # pylint: disable=g-import-not-at-top
  return lambda x: lrn.local_response_norm(
      x, model.lrn_size, model.lrn_k, model.lrn_alpha, model.lrn_beta, model.lrn_groups,
      model.lrn_impl, model.lrn_grad)  # Neither has an 'auto'.


def pool_fn(model) -> Callable:
  """The model's max-pool (its resolved implementation) as a function."""
  from alexnet_jax.ops import pool  # pylint: disable=g-import-not-at-top
  # An experiment's function as given; a name with 'auto' resolved.
  impl = model.pool_impl if callable(model.pool_impl) else model.impls()['pool_impl']
  return lambda x: pool.max_pool(x, impl=impl)


def layer_fn(module) -> Callable:
  """``(kernel, bias, x) -> module(x)`` for a captured conv or dense module."""
  return lambda kernel, bias, x: module.apply({'params': {'kernel': kernel, 'bias': bias}}, x)
