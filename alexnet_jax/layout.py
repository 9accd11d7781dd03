"""How AlexNet is laid out on devices: the one place that knows about meshes.

A mesh has two axes, ``data`` and ``model``. A layout says, as data, where each parameter lives
(a table of ``PartitionSpec``s over the model's parameter tree), how the batch is split, and
which of the model's layers are split over ``model``. Data-, model- and hybrid-parallel runs are
the same ``train.train_step`` under a different mesh and layout:

=================  ==================================  ==========================================
layout             parameters                          activations that cross devices
=================  ==================================  ==========================================
``towers``         every kernel's output features      conv3's input, fc6/fc7/fc8 inputs and the
(the paper)        split over ``model`` (one tower     logits (all_gather over ``model``); the
                   per device); replicated over        gradients of all parameters (psum over
                   ``data``                            ``data``)
``one_weird_trick``  conv layers replicated (data-     fc6's input batch (all_gather over
(Krizhevsky 2014)  parallel over the whole mesh); fc   ``model``), fc7/fc8 inputs and the logits;
                   layers split over ``model``         conv gradients (psum over both axes), fc
                                                       gradients (psum over ``data``)
=================  ==================================  ==========================================

With ``mesh.model == 1`` both layouts are plain data parallelism: the batch is split over
``data``, parameters are replicated and gradients are averaged. The parameter tree is always the
full one of ``alexnet_jax.model`` (shards are views of it), so a checkpoint written under any
layout restores under any other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import model as model_lib
from alexnet_jax import steps as steps_lib

DATA, MODEL = 'data', 'model'
MESH_AXES = (DATA, MODEL)

_CONV_SPLIT = {'kernel': P(None, None, None, MODEL), 'bias': P(MODEL)}
_FC_SPLIT = {'kernel': P(None, MODEL), 'bias': P(MODEL)}
_REPLICATED = {'kernel': P(), 'bias': P()}
_CONVS = tuple(row[0] for row in model_lib.CONV_LAYERS)
_FCS = tuple(name for name, _ in model_lib.FC_LAYERS) + ('fc8',)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each layer lives and how the batch is split (see the module docstring)."""
  name: str
  param_specs: dict[str, dict[str, P]]   # layer -> {'kernel': spec, 'bias': spec}
  batch_spec: P                           # the input batch's leading axis
  model_parallel_convs: bool
  model_parallel_fcs: bool
  crosses_devices: str                    # what the README tables say, kept beside the specs


LAYOUTS = {
    'towers': Layout(
        name='towers',
        param_specs={**dict.fromkeys(_CONVS, _CONV_SPLIT), **dict.fromkeys(_FCS, _FC_SPLIT)},
        batch_spec=P(DATA),
        model_parallel_convs=True,
        model_parallel_fcs=True,
        crosses_devices='all_gather over model at conv3, fc6, fc7, fc8 inputs and the logits; '
                        'gradients psum over data'),
    'one_weird_trick': Layout(
        name='one_weird_trick',
        param_specs={**dict.fromkeys(_CONVS, _REPLICATED), **dict.fromkeys(_FCS, _FC_SPLIT)},
        batch_spec=P((DATA, MODEL)),
        model_parallel_convs=False,
        model_parallel_fcs=True,
        crosses_devices='all_gather over model of the batch at fc6 and of the features at '
                        'fc7, fc8 inputs and the logits; conv gradients psum over data and '
                        'model, fc gradients over data'),
}


class LayoutError(ValueError):
  """A mesh or batch that does not fit the devices or the network."""


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """A (data, model) mesh over ``devices`` (default: all devices of all processes).

  -1 for one axis means all remaining devices. Axes are Auto (not Explicit) sharding axes.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1 and model == -1:
    raise LayoutError('Set at most one of mesh.data and mesh.model to -1 (all remaining '
                      'devices).')
  if model == -1:
    model = n // data if data > 0 and n % data == 0 else 0
  if data == -1:
    data = n // model if model > 0 and n % model == 0 else 0
  if data < 1 or model < 1 or data * model != n:
    if data * model > n:
      raise LayoutError(f'The mesh asks for {data} x {model} = {data * model} devices but only '
                        f'{n} exist; set mesh.data and mesh.model so their product is {n}.')
    raise LayoutError(f'mesh.data x mesh.model must use all {n} devices (got data={data}, '
                      f'model={model}); use -1 for one axis to take the remaining devices.')
  try:
    grid = mesh_utils.create_device_mesh((data, model), devices=devices)
  except (ValueError, AssertionError, NotImplementedError):
    grid = np.asarray(devices).reshape(data, model)
  return Mesh(grid, MESH_AXES)


def get_layout(name: str) -> Layout:
  if name not in LAYOUTS:
    raise LayoutError(f'Unknown layout {name!r}; choose one of {sorted(LAYOUTS)}.')
  return LAYOUTS[name]


def sharded_model(model: model_lib.AlexNet, layout: Layout) -> model_lib.AlexNet:
  """The model as one device of the mesh runs it (with the model axis's collectives)."""
  return model.clone(model_axis=MODEL, model_parallel_convs=layout.model_parallel_convs,
                     model_parallel_fcs=layout.model_parallel_fcs)


def param_specs(layout: Layout, params) -> Any:
  """PartitionSpecs for a parameter tree (the full tree of ``alexnet_jax.model``)."""
  return {layer: {leaf: layout.param_specs[layer][leaf] for leaf in leaves}
          for layer, leaves in params.items()}


def _spec_axes(spec: P) -> set[str]:
  axes = set()
  for entry in spec:
    if entry is None:
      continue
    axes.update(entry if isinstance(entry, tuple) else (entry,))
  return axes


def grad_sum_axes(specs) -> Any:
  """For each parameter, the mesh axes it is replicated on: its gradient is summed over them."""
  return jax.tree_util.tree_map(lambda s: tuple(a for a in MESH_AXES if a not in _spec_axes(s)),
                                specs, is_leaf=lambda x: isinstance(x, P))


def state_specs(layout: Layout, state: steps_lib.TrainState,
                tx: optax.GradientTransformation) -> steps_lib.TrainState:
  """PartitionSpecs for a whole train state: optimizer slots follow their parameters."""
  pspecs = param_specs(layout, state.params)
  opt_specs = optax.tree_map_params(
      tx, lambda _, spec: spec, state.opt_state, pspecs,
      transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
  return steps_lib.TrainState(step=P(), params=pspecs, opt_state=opt_specs, rng=P())


def check_batch(global_batch_size: int, mesh: Mesh, layout: Layout) -> None:
  """Refuses a global batch that does not divide over the devices the batch is split on."""
  shards = math.prod(mesh.shape[a] for a in _spec_axes(layout.batch_spec))
  if global_batch_size % shards:
    raise LayoutError(
        f'The global batch size {global_batch_size} does not divide over the {shards} devices '
        f'the batch is split on ({layout.name} layout, mesh {dict(mesh.shape)}); choose a '
        f'multiple of {shards}.')


def check_model(model: model_lib.AlexNet, mesh: Mesh, layout: Layout) -> None:
  """Refuses a model axis the network cannot be split over, before anything compiles."""
  m = mesh.shape[MODEL]
  if m == 1:
    return
  if layout.model_parallel_convs and m != 2:
    raise LayoutError(f'The towers layout holds one tower per device: mesh.model must be 1 or '
                      f'2, not {m}; use the one_weird_trick layout for wider model axes.')
  if layout.model_parallel_convs and model.use_lrn and model.lrn_groups % m:
    # Each device normalises only its own tower's maps: an LRN window that crosses the towers'
    # boundary on one device would silently become a different network here.
    raise LayoutError(f'The towers layout runs LRN inside each tower, but model.lrn_groups='
                      f'{model.lrn_groups} lets LRN windows cross the boundary between the '
                      f'{m} towers; use lrn_groups=2 (the paper) or the one_weird_trick layout.')
  for name, _, _, _, _, groups in model.conv_layers:
    # Each device holds one tower: conv2, conv4 and conv5 must see that tower's maps only.
    if layout.model_parallel_convs and name not in ('conv1', 'conv3') and groups % m:
      raise LayoutError(f'The towers layout needs the two-tower network, but {name} has '
                        f'{groups} group(s) (a single-tower preset such as torchvision); use '
                        'the one_weird_trick layout.')
  for name, features in model_lib.FC_LAYERS + (('fc8', model.num_classes),):
    if features % m:
      raise LayoutError(f'{name} has {features} outputs, which do not split over mesh.model='
                        f'{m} devices; choose a model axis size that divides it.')


@dataclasses.dataclass(frozen=True)
class ShardedSteps:
  """The jitted steps of one (mesh, layout) and the shardings of their inputs."""
  mesh: Mesh
  layout: Layout
  state_sharding: Any
  batch_sharding: NamedSharding
  train_step: Callable   # (state, batch) -> (state, metrics)
  eval_step: Callable    # (params, batch) -> metric sums


def make_steps(model: model_lib.AlexNet, tx: optax.GradientTransformation, mesh: Mesh,
               layout: Layout, abstract_state: steps_lib.TrainState) -> ShardedSteps:
  """Wraps ``train.train_step`` / ``train.eval_step`` in ``jax.shard_map`` over ``mesh``."""
  check_model(model, mesh, layout)
  specs = state_specs(layout, abstract_state, tx)
  batch_axes = _spec_axes(layout.batch_spec)
  collectives = steps_lib.Collectives(mesh_axes=MESH_AXES,
                                      batch_axes=tuple(a for a in MESH_AXES if a in batch_axes),
                                      grad_sum_axes=grad_sum_axes(specs.params))
  local_model = sharded_model(model, layout)
  batch_spec = layout.batch_spec

  def train_fn(state, batch):
    return steps_lib.train_step(state, batch, model=local_model, tx=tx, collectives=collectives)

  def eval_fn(params, batch):
    return steps_lib.eval_step(params, batch, model=local_model, collectives=collectives)

  # check_vma=False: each device differentiates its share of one global objective and the
  # gradients are summed explicitly over the replicated axes (see alexnet_jax.steps).
  train_sharded = jax.shard_map(train_fn, mesh=mesh, in_specs=(specs, batch_spec),
                                out_specs=(specs, P()), check_vma=False)
  eval_sharded = jax.shard_map(eval_fn, mesh=mesh, in_specs=(specs.params, batch_spec),
                               out_specs=P(), check_vma=False)
  state_sharding = jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                          is_leaf=lambda x: isinstance(x, P))
  return ShardedSteps(
      mesh=mesh, layout=layout, state_sharding=state_sharding,
      batch_sharding=NamedSharding(mesh, batch_spec),
      train_step=jax.jit(train_sharded, donate_argnums=0),
      eval_step=jax.jit(eval_sharded))


def place_state(state: steps_lib.TrainState, steps: ShardedSteps) -> steps_lib.TrainState:
  """Puts a (host or differently sharded) train state onto the mesh."""
  return jax.device_put(state, steps.state_sharding)


def place_batch(local_batch: dict[str, np.ndarray], steps: ShardedSteps) -> dict[str, jax.Array]:
  """Assembles this process's part of a global batch into arrays sharded over the mesh."""
  return {k: jax.make_array_from_process_local_data(steps.batch_sharding, v)
          for k, v in local_batch.items()}
