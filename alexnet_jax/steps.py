"""The train state and the pure per-device steps: softmax cross-entropy, the paper's SGD, metrics.

``train_step`` and ``eval_step`` are written once for every layout. They run on one device as
they are, or inside ``jax.shard_map`` over a mesh (``alexnet_jax.layout`` wraps them): there each
device computes its share of one global objective and the gradient of each parameter is summed
over the mesh axes that hold copies of it, as the layout's table says.

Why this is exact under ``shard_map(check_vma=False)``: the global objective is the *sum* over
devices of the local objectives. A device whose logits hold ``r`` rows uses
``mean(CE over its rows) / num_devices``; summed over the mesh that is the mean over the global
batch however many devices compute the same rows (rows are replicated across ``model`` in the
paper's layout). The collectives' transposes (all_gather -> psum_scatter) then route cotangents
exactly, and each parameter copy's gradient is its share; summing the shares over the axes the
parameter is replicated on gives the full gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from alexnet_jax import device_augment
from alexnet_jax import model as model_lib
from alexnet_jax import unrolled_threefry


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes; the rng lives here, not in a global."""
  step: jax.Array          # int32 scalar: number of updates applied
  params: Any
  opt_state: Any
  rng: jax.Array           # raw uint32[2] key, split once per step (checkpointable as is)


def create_train_state(rng: jax.Array, model: model_lib.AlexNet,
                       tx: optax.GradientTransformation,
                       image_shape=(1, 227, 227, 3)) -> TrainState:
  """Initialises parameters (full, unsharded) and optimizer state from ``rng``."""
  init_rng, state_rng = jax.random.split(rng)
  params = model.init(init_rng, jnp.zeros(image_shape, jnp.float32), train=False)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=state_rng)


def jit_create_train_state(model: model_lib.AlexNet, tx: optax.GradientTransformation,
                           image_shape=(1, 227, 227, 3), **jit_kwargs):
  """:func:`create_train_state` for ``model`` and ``tx``, jitted: ``rng -> TrainState``.

  Jitted, init's forward pass is dead code (eager, it runs op by op, each op compiled on its
  own); compiled with :mod:`alexnet_jax.unrolled_threefry`'s hash (the same bits, faster to
  compile). ``jit_kwargs`` go to ``jax.jit`` (``out_shardings``).
  """
  return unrolled_threefry.jit(
      lambda rng: create_train_state(rng, model, tx, image_shape), **jit_kwargs)


# --------------------------------------------------------------------------------------------
# The mesh context a step runs in. ``Collectives()`` (the default) is one device.
# --------------------------------------------------------------------------------------------
@flax.struct.dataclass
class Collectives:
  """How a per-device step talks to the rest of the mesh (static, from ``alexnet_jax.layout``).

  Attributes:
    mesh_axes: every mesh axis name (the step's metrics are summed over all of them).
    batch_axes: the axes the input batch is split over.
    grad_sum_axes: a pytree like params whose leaves are tuples of the axes to sum that
      parameter's gradient over (the axes it is replicated on); None on one device.
  """
  mesh_axes: tuple[str, ...] = flax.struct.field(pytree_node=False, default=())
  batch_axes: tuple[str, ...] = flax.struct.field(pytree_node=False, default=())
  grad_sum_axes: Any = flax.struct.field(pytree_node=False, default=None)

  def num_devices(self) -> int:
    return math.prod(lax.axis_size(axis) for axis in self.mesh_axes)

  def num_batch_shards(self) -> int:
    return math.prod(lax.axis_size(axis) for axis in self.batch_axes)

  def device_index(self) -> jax.Array:
    """A distinct integer per device of the mesh (0 on one device)."""
    index = jnp.zeros((), jnp.int32)
    for axis in self.mesh_axes:
      index = index * lax.axis_size(axis) + lax.axis_index(axis)
    return index

  def sum_over_mesh(self, tree):
    return lax.psum(tree, self.mesh_axes) if self.mesh_axes else tree

  def sum_grads(self, grads):
    if self.grad_sum_axes is None:
      return grads
    return jax.tree_util.tree_map(
        lambda g, axes: lax.psum(g, axes) if axes else g, grads, self.grad_sum_axes,
        is_leaf=lambda x: isinstance(x, tuple))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def topk_errors(scores: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example top-1 and top-5 errors (1.0 = wrong) from logits or probabilities."""
  k = min(5, scores.shape[-1])
  top = lax.top_k(scores, k)[1]
  hit = top == labels[:, None]
  return 1.0 - hit[:, 0].astype(jnp.float32), 1.0 - hit.any(axis=-1).astype(jnp.float32)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: model_lib.AlexNet,
               tx: optax.GradientTransformation,
               collectives: Collectives = Collectives()) -> tuple[TrainState, dict]:
  """One SGD step on ``batch`` ({'image': (B, 227, 227, 3), 'label': (B,)}) -> (state, metrics).

  A uint8 ``image`` comes with its flips and colour offsets (``device_augment``), applied here.
  Metrics are means over the global batch: 'loss', 'top1_error', 'top5_error'.
  """
  images = device_augment.network_inputs(batch)
  rng, step_rng = jax.random.split(state.rng)
  # Each device draws its own dropout mask.
  dropout_rng = jax.random.fold_in(step_rng, collectives.device_index())
  n_devices = collectives.num_devices()

  def objective(params):
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': dropout_rng})
    labels = _labels_for(logits, batch['label'], model)
    ce = cross_entropy(logits, labels)
    return jnp.mean(ce) / n_devices, (logits, labels, ce)

  grads, (logits, labels, ce) = jax.grad(objective, has_aux=True)(state.params)
  grads = collectives.sum_grads(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  top1, top5 = topk_errors(logits, labels)
  metrics = collectives.sum_over_mesh({
      'loss': jnp.mean(ce) / n_devices,
      'top1_error': jnp.mean(top1) / n_devices,
      'top5_error': jnp.mean(top5) / n_devices,
  })
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
  return new_state, metrics


def _labels_for(logits: jax.Array, labels: jax.Array, model: model_lib.AlexNet) -> jax.Array:
  """The labels of the logits' rows: in the "one weird trick" layout the fully-connected layers
  see the batch gathered over the model axis, so the labels are gathered the same way."""
  if (model.model_axis is not None and model.model_parallel_fcs and
      not model.model_parallel_convs and logits.shape[0] != labels.shape[0]):
    return lax.all_gather(labels, model.model_axis, axis=0, tiled=True)
  return labels


def eval_step(params, batch: dict[str, jax.Array], *, model: model_lib.AlexNet,
              collectives: Collectives = Collectives()) -> dict[str, jax.Array]:
  """Sums over the real examples of ``batch`` (``mask`` marks them): 'loss', 'top1_errors',
  'top5_errors', 'count'. Divide by 'count' for means.

  ``batch['image']`` is (B, 227, 227, 3), or (B, K, 227, 227, 3) for the paper's K-crop test
  (the softmax outputs of the K crops are averaged before the loss and errors); uint8 crops are
  made inputs first (``device_augment``).
  """
  images = device_augment.network_inputs(batch)
  crops = images.shape[1] if images.ndim == 5 else 1
  flat = images.reshape((-1,) + images.shape[-3:])
  logits = model.apply({'params': params}, flat, train=False)
  rows = logits.shape[0] // crops
  probs = jax.nn.softmax(logits).reshape(rows, crops, -1).mean(axis=1)
  labels = _labels_for(probs, batch['label'], model)
  mask = _labels_for(probs, batch['mask'], model).astype(jnp.float32)
  # Every device holding the same rows adds them; dividing by that replication keeps sums exact.
  global_rows = collectives.num_batch_shards() * batch['label'].shape[0]
  replication = collectives.num_devices() * rows / global_rows
  loss = -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0] + 1e-12)
  top1, top5 = topk_errors(probs, labels)
  return collectives.sum_over_mesh({
      'loss': jnp.sum(loss * mask) / replication,
      'top1_errors': jnp.sum(top1 * mask) / replication,
      'top5_errors': jnp.sum(top5 * mask) / replication,
      'count': jnp.sum(mask) / replication,
  })


def make_single_device_steps(model: model_lib.AlexNet, tx: optax.GradientTransformation,
                             donate_state: bool = True) -> tuple[Callable, Callable]:
  """Jitted (train_step, eval_step) on one device, no mesh (the reference for the layouts).

  ``donate_state``: the train step reuses the old state's buffers for the new one (the caller's
  state is consumed); off only to measure what donation saves (experiments/PERF.md).
  """
  train = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx),
                  donate_argnums=0 if donate_state else ())
  evaluate = jax.jit(lambda p, b: eval_step(p, b, model=model))
  return train, evaluate
