"""Tests of alexnet_jax.layout: every mesh layout computes what one device computes.

The reference is ``train.make_single_device_steps``: the same model and the paper's optimizer
(momentum 0.9, weight decay 5e-4, rate injected) on one device and the whole batch. Each layout
(data=2, data=4, towers model=2, towers 2x2, one weird trick 2x2) takes step 1 from the initial
state and step 2 from the reference's state after step 1 (non-zero momentum, sharded like its
parameters), and must give the same updates, parameters and metrics; its eval sums (padded mask,
and the 10-crop average) must equal the reference's. Further: the shards each device holds are
the paper's per-GPU halves, the lowered step exchanges exactly the activations the paper's GPUs
exchanged, bad meshes, batches and models are refused with clear errors, and a state moves
between layouts without changing the result.

Cost on 2 CPU cores: one compiled train and eval program per layout (module-level caches), batch
8, 10 classes, dropout 0 (dropout masks are drawn per device, so they differ by design).
"""

from __future__ import annotations

import functools
import json
import re
import types

import chex
import jax
import numpy as np
import optax
import pytest

from alexnet_jax import layout as layout_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import steps as steps_lib

BATCH = 8
NUM_CLASSES = 10
LEARNING_RATE = 0.01
# The model's defaults except conv1: its 'space_to_depth' form (the CPU default) is a
# convolution whose fp32 summation order depends on its output-channel count, so conv1 split
# over the towers' two devices (48 kernels each) rounds differently from 96 kernels on one
# device (max 3e-5 apart on outputs of order 1), and max-pool ties broken by that rounding on
# these noise images move conv1's update by up to 6e-3 of its size. With conv1 'direct', every
# layout computes each output with the same sums as one device, so the comparison stays tight
# (1e-5); the other CPU defaults (custom gradients of pooling, LRN and kernels) run here as
# they train. space_to_depth's own equality to 'direct' is tested in test_speed_options.
MODEL = model_lib.AlexNet(num_classes=NUM_CLASSES, dropout_rate=0.0, conv1_impl='direct')
TX = optim.sgd_with_injected_lr(LEARNING_RATE)  # the paper's momentum 0.9 and weight decay 5e-4

# case -> (layout name, mesh data, mesh model).
CASES = {
    'data2': ('towers', 2, 1),
    'data4': ('towers', 4, 1),
    'towers_model2': ('towers', 1, 2),
    'towers_2x2': ('towers', 2, 2),
    'one_weird_trick_2x2': ('one_weird_trick', 2, 2),
}

# fp32 tolerances. A sharded step adds the per-example gradients in another order than one
# device does (partial sums per device, then a psum), so each update leaf may differ by a few
# fp32 roundings of its size; any real error (a missing or doubled psum, a wrong shard, a
# misrouted cotangent) is a relative error of order 1, and even weight decay applied twice is
# 1e-3 here (the gradients dominate: see test_the_reference_step_is_not_trivial).
UPDATE_RTOL = 1e-5   # ||update - reference update|| / ||reference update||, per leaf
PARAM_ATOL = 1e-7    # parameters are ~1e-2; fp32 spacing there is ~1e-9
PARAM_RTOL = 1e-6
METRIC_RTOL = 1e-5
EVAL_RTOL = 1e-5

# The paper's per-GPU kernels (each tower's half of every layer), HWIO / (in, out).
TOWER_KERNEL_SHAPES = {
    'conv1': (11, 11, 3, 48), 'conv2': (5, 5, 48, 128), 'conv3': (3, 3, 256, 192),
    'conv4': (3, 3, 192, 192), 'conv5': (3, 3, 192, 128), 'fc6': (9216, 2048),
    'fc7': (4096, 2048), 'fc8': (4096, NUM_CLASSES // 2),
}


# --------------------------------------------------------------------------------------------
# Inputs, the one-device reference and the runs of each layout (shared by the tests)
# --------------------------------------------------------------------------------------------
def _images(rng, shape):
  # Mean-subtracted pixel units, as the input pipeline feeds them (std ~60 of 0..255 pixels):
  # at this scale every layer's gradient dominates its weight decay term.
  return rng.normal(0.0, 60.0, shape).astype(np.float32)


def _initial_state(rng) -> steps_lib.TrainState:
  """A host train state with the paper's init: kernels N(0, 0.01), biases 0 or 1, no momentum.

  Drawn with numpy: the model's own init draws 57M normals with threefry, which costs 15 s on
  2 CPU cores, and these tests need a realistic state, not that particular one.
  """
  abstract = jax.eval_shape(lambda key, x: MODEL.init(key, x)['params'], jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, 227, 227, 3), np.float32))
  biases = model_lib.INITS['paper']['bias']
  params = {layer: {'kernel': rng.normal(0.0, 0.01, leaves['kernel'].shape).astype(np.float32),
                    'bias': np.full(leaves['bias'].shape, biases[layer], np.float32)}
            for layer, leaves in abstract.items()}
  return jax.device_get(steps_lib.TrainState(step=np.zeros((), np.int32), params=params,
                                             opt_state=TX.init(params),
                                             rng=np.asarray(jax.random.PRNGKey(0))))


@functools.cache
def _inputs():
  """Host (numpy) initial state, two train batches and two masked eval batches."""
  rng = np.random.default_rng(0)
  state = _initial_state(rng)
  train_batches = [{'image': _images(rng, (BATCH, 227, 227, 3)),
                    'label': rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)}
                   for _ in range(2)]
  # Padding rows (mask 0) in the last positions, as the eval loader pads its last batch; the
  # padded rows get the first label so that counting them would change every sum.
  eval_batch = {'image': _images(rng, (BATCH, 227, 227, 3)),
                'label': rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
                'mask': np.array([1, 1, 1, 1, 1, 0, 0, 0], np.int32)}
  # The paper's 10-crop test: (B, 10, 227, 227, 3), B = 4 (one image per device on 2x2).
  crops_batch = {'image': _images(rng, (4, 10, 227, 227, 3)),
                 'label': rng.integers(0, NUM_CLASSES, 4).astype(np.int32),
                 'mask': np.array([1, 1, 1, 0], np.int32)}
  return types.SimpleNamespace(state=state, train_batches=train_batches, eval_batch=eval_batch,
                               crops_batch=crops_batch)


@functools.cache
def _reference():
  """The one-device results: host states and metrics after steps 1 and 2, and eval sums."""
  inputs = _inputs()
  train, evaluate = steps_lib.make_single_device_steps(MODEL, TX)
  state = jax.device_put(inputs.state)
  states, metrics = [], []
  for batch in inputs.train_batches:
    state, m = train(state, batch)
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return types.SimpleNamespace(
      states=states, metrics=metrics,
      eval=jax.device_get(evaluate(inputs.state.params, inputs.eval_batch)),
      crops_eval=jax.device_get(evaluate(inputs.state.params, inputs.crops_batch)))


def _mesh(data: int, model: int):
  return layout_lib.make_mesh(data, model, devices=jax.devices()[:data * model])


@functools.cache
def _steps(case: str) -> layout_lib.ShardedSteps:
  """The compiled steps of one case (cached: each AlexNet program costs seconds to compile)."""
  name, data, model = CASES[case]
  abstract = jax.eval_shape(lambda rng: steps_lib.create_train_state(rng, MODEL, TX),
                            jax.random.PRNGKey(0))
  return layout_lib.make_steps(MODEL, TX, _mesh(data, model), layout_lib.get_layout(name),
                               abstract)


def _step(steps, host_state, batch):
  """One sharded train step from a host state: (new device state, host metrics)."""
  state, metrics = steps.train_step(layout_lib.place_state(host_state, steps),
                                    layout_lib.place_batch(batch, steps))
  return state, jax.device_get(metrics)


@pytest.fixture(scope='module', params=list(CASES))
def run(request):
  """One layout's two train steps and its eval sums (not cached: a run holds ~1 GB).

  Step 1 starts from the initial state, step 2 from the *reference's* state after step 1 (its
  momentum placed on the layout): each step is compared from identical inputs. Chaining the
  layout's own steps instead lets fp32 roundings of step 1 (1 ulp in the parameters) grow
  through the network: the one-device step 2 itself moves conv1's update by 1.5e-4 of its size
  when step 1's parameters are nudged by 1 ulp (max-pool and ReLU decisions flip), so a chained
  comparison could only use a tolerance far above what a correct step gives.
  """
  inputs, reference = _inputs(), _reference()
  steps = _steps(request.param)
  state, metrics1 = _step(steps, inputs.state, inputs.train_batches[0])
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  ndims = jax.tree_util.tree_map(lambda x: x.ndim, state)
  state1 = jax.device_get(state)
  state, metrics2 = _step(steps, reference.states[0], inputs.train_batches[1])
  state2 = jax.device_get(state)
  del state
  eval_params = jax.device_put(inputs.state.params, steps.state_sharding.params)
  evaluate = lambda b: jax.device_get(steps.eval_step(eval_params,
                                                      layout_lib.place_batch(b, steps)))
  crops_eval = (evaluate(inputs.crops_batch) if request.param == 'one_weird_trick_2x2'
                else None)
  return types.SimpleNamespace(case=request.param, steps=steps, states=[state1, state2],
                               metrics=[metrics1, metrics2], shardings=shardings, ndims=ndims,
                               eval=evaluate(inputs.eval_batch), crops_eval=crops_eval)


# --------------------------------------------------------------------------------------------
# Comparison helpers
# --------------------------------------------------------------------------------------------
def _leaves(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _update(state):
  """The step's update ``v`` (``w_new = w_old + v``): the momentum slot of the paper's SGD.

  Read from the optimizer state rather than as ``w_new - w_old``: biases sit near 1, where
  fp32 parameters quantise a ~1e-3 update to ~1e-7 (1e-4 of it), hiding the update's precision.
  """
  return optax.tree_utils.tree_get(state.opt_state, 'trace')


def _relative_errors(got, want):
  """Per leaf: ||got - want|| / ||want|| (fp32 differences of close numbers are exact)."""
  got, want = _leaves(got), _leaves(want)
  return {k: float(np.linalg.norm(got[k] - want[k]) / np.linalg.norm(want[k])) for k in want}


def _assert_same_step(state, metrics, ref_state, ref_metrics, label):
  """A step's update, parameters, optimizer state and metrics equal the reference's."""
  errors = _relative_errors(_update(state), _update(ref_state))
  worst = max(errors, key=errors.get)
  assert errors[worst] <= UPDATE_RTOL, (
      f'{label}: update of {worst} differs from the one-device update by {errors[worst]:.2e} '
      f'of its size (all: {errors})')
  chex.assert_trees_all_close(state.params, ref_state.params, atol=PARAM_ATOL, rtol=PARAM_RTOL,
                              custom_message=f'{label}, params')
  chex.assert_trees_all_close(metrics, ref_metrics, rtol=METRIC_RTOL, atol=1e-7,
                              custom_message=f'{label}, metrics')
  assert int(state.step) == int(ref_state.step)
  np.testing.assert_array_equal(state.rng, ref_state.rng)
  assert (optim.get_learning_rate(state.opt_state) ==
          optim.get_learning_rate(ref_state.opt_state))


# --------------------------------------------------------------------------------------------
# 1. Every layout's train and eval steps equal the one-device steps
# --------------------------------------------------------------------------------------------
def test_the_reference_step_is_not_trivial():
  """The comparisons below mean something: every leaf moves, by its gradient (not its decay).

  Step 1's update is ``-lr * (g + wd * w)`` (kernels; biases undecayed). If ``g`` were tiny next
  to the decay term, the update test could not tell a wrong gradient from a right one.
  """
  inputs, reference = _inputs(), _reference()
  old, update = _leaves(inputs.state.params), _leaves(_update(reference.states[0]))
  for k in old:
    decay = LEARNING_RATE * 5e-4 * np.linalg.norm(old[k]) if k.endswith("['kernel']") else 0.0
    assert np.linalg.norm(update[k]) > 100 * decay, (k, np.linalg.norm(update[k]), decay)
  # Step 2 carries momentum: its update is not a multiple of step 1's.
  step2 = _leaves(_update(reference.states[1]))
  for k in old:
    cos = np.vdot(update[k], step2[k]) / np.linalg.norm(update[k]) / np.linalg.norm(step2[k])
    assert cos < 0.999, (k, cos)
  # Metrics are those of a real batch of 10 classes at initialisation (loss near ln 10).
  assert 1.0 < reference.metrics[0]['loss'] < 5.0
  assert reference.metrics[1]['loss'] != reference.metrics[0]['loss']


def test_two_train_steps_equal_the_one_device_steps(run):
  reference = _reference()
  for i in range(2):
    _assert_same_step(run.states[i], run.metrics[i], reference.states[i], reference.metrics[i],
                      f'{run.case}, step {i + 1}')
  # The new state comes back with the layout's shardings (momentum slots included), so it
  # feeds the next step as it is.
  chex.assert_trees_all_equal_structs(run.shardings, run.steps.state_sharding)
  for got, want, ndim in zip(jax.tree_util.tree_leaves(run.shardings),
                             jax.tree_util.tree_leaves(run.steps.state_sharding),
                             jax.tree_util.tree_leaves(run.ndims)):
    assert got.is_equivalent_to(want, ndim), (got, want)


def test_eval_sums_equal_the_one_device_eval(run):
  reference = _reference()
  chex.assert_trees_all_close(run.eval, reference.eval, rtol=EVAL_RTOL, atol=1e-6,
                              custom_message=run.case)
  assert run.eval['count'] == 5.0  # the 3 padded rows are not counted
  if run.crops_eval is not None:
    chex.assert_trees_all_close(run.crops_eval, reference.crops_eval, rtol=EVAL_RTOL, atol=1e-6,
                                custom_message=f'{run.case}, 10 crops')
    assert run.crops_eval['count'] == 3.0


def test_ten_crop_eval_averages_the_softmax_of_the_crops():
  """The reference's 10-crop sums are those of the crop-averaged softmax (numpy, float64)."""
  inputs, reference = _inputs(), _reference()
  batch = inputs.crops_batch
  n, k = batch['image'].shape[:2]
  logits = np.asarray(jax.jit(MODEL.apply)({'params': inputs.state.params},
                                           batch['image'].reshape((n * k, 227, 227, 3))),
                      np.float64).reshape(n, k, -1)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs = (probs / probs.sum(-1, keepdims=True)).mean(axis=1)
  mask = batch['mask'].astype(bool)
  labels = batch['label']
  loss = -np.log(probs[np.arange(n), labels] + 1e-12)
  ranks = (probs > probs[np.arange(n), labels][:, None]).sum(-1)
  want = {'loss': loss[mask].sum(), 'top1_errors': float((ranks[mask] >= 1).sum()),
          'top5_errors': float((ranks[mask] >= 5).sum()), 'count': float(mask.sum())}
  chex.assert_trees_all_close({k: np.float64(v) for k, v in reference.crops_eval.items()}, want,
                              rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 2. Shards: each device holds its tower's half of every layer
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('case', ['towers_model2', 'towers_2x2'])
def test_tower_shards_are_the_papers_per_gpu_halves(case):
  steps = _steps(case)
  inputs = _inputs()
  state = layout_lib.place_state(inputs.state, steps)
  mesh = steps.mesh
  for layer, shape in TOWER_KERNEL_SHAPES.items():
    full = inputs.state.params[layer]['kernel']
    momentum = optax.tree_utils.tree_get(state.opt_state, 'trace')
    for leaf in (state.params[layer]['kernel'], momentum[layer]['kernel']):
      assert len(leaf.addressable_shards) == mesh.size
      for shard in leaf.addressable_shards:
        assert shard.data.shape == shape, (layer, shard.device, shard.data.shape)
        # The device's position on the model axis is its tower; data replicas hold the same.
        tower = int(np.argwhere(mesh.devices == shard.device)[0][1])
        if leaf is state.params[layer]['kernel']:
          np.testing.assert_array_equal(
              np.asarray(shard.data), full[..., tower * shape[-1]:(tower + 1) * shape[-1]])
    bias = state.params[layer]['bias']
    assert {s.data.shape for s in bias.addressable_shards} == {(shape[-1],)}


def test_one_weird_trick_replicates_convs_and_splits_fcs():
  steps = _steps('one_weird_trick_2x2')
  state = layout_lib.place_state(_inputs().state, steps)
  for layer, shape in TOWER_KERNEL_SHAPES.items():
    full = _inputs().state.params[layer]['kernel'].shape
    want = full if layer.startswith('conv') else shape
    assert {s.data.shape for s in state.params[layer]['kernel'].addressable_shards} == {want}


# --------------------------------------------------------------------------------------------
# 3. The collectives of the lowered train step
# --------------------------------------------------------------------------------------------
_COLLECTIVE = re.compile(
    r'"stablehlo\.(all_gather|reduce_scatter|all_reduce|all_to_all|collective_permute)"')
_TYPES = re.compile(r' : \((.*)\) -> (.*)$')


def _tensor_shapes(types_text: str) -> list[tuple[int, ...]]:
  shapes = []
  for body in re.findall(r'tensor<([^>]*)>', types_text):
    shapes.append(tuple(int(d) for d in body.split('x')[:-1]))
  return shapes


def _collectives(text: str) -> list[dict]:
  """Each collective of StableHLO ``text``: kind, replica groups, operand and result shapes."""
  lines = text.splitlines()
  found = []
  for i, line in enumerate(lines):
    match = _COLLECTIVE.search(line)
    if not match:
      continue
    groups = re.search(r'replica_groups = dense<(.*?)> : tensor<(\d+)x(\d+)xi64>', line)
    values = json.loads(groups.group(1))
    groups = np.broadcast_to(np.asarray(values), (int(groups.group(2)), int(groups.group(3))))
    # One-line ops end with their types; ops with a reduction region end at "}) : (...) -> ...".
    j = i
    while not _TYPES.search(lines[j]):
      j += 1
    operands, results = _TYPES.search(lines[j]).groups()
    dim = re.search(r'(?:all_gather_dim|scatter_dimension) = (\d+)', line)
    found.append({'kind': match.group(1), 'groups': groups.tolist(),
                  'operands': _tensor_shapes(operands), 'results': _tensor_shapes(results),
                  'dim': int(dim.group(1)) if dim else None})
  return found


def _lowered_train_step(steps) -> str:
  abstract = jax.eval_shape(lambda rng: steps_lib.create_train_state(rng, MODEL, TX),
                            jax.random.PRNGKey(0))
  state = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
      steps.state_sharding)
  batch = {'image': jax.ShapeDtypeStruct((BATCH, 227, 227, 3), np.float32,
                                         sharding=steps.batch_sharding),
           'label': jax.ShapeDtypeStruct((BATCH,), np.int32, sharding=steps.batch_sharding)}
  return steps.train_step.lower(state, batch).as_text()


def _axis_groups(mesh, axis: str) -> list[list[int]]:
  """Replica groups (positions in the mesh's device order) of the devices along ``axis``."""
  positions = np.arange(mesh.size).reshape(mesh.devices.shape)
  if axis == layout_lib.MODEL:
    return positions.tolist()
  if axis == layout_lib.DATA:
    return positions.T.tolist()
  return positions.reshape(1, -1).tolist()  # the whole mesh


def _param_shard_shapes(steps):
  abstract = jax.eval_shape(lambda rng: steps_lib.create_train_state(rng, MODEL, TX),
                            jax.random.PRNGKey(0))
  return jax.tree_util.tree_map(lambda x, s: tuple(s.shard_shape(x.shape)), abstract.params,
                                steps.state_sharding.params)


def test_towers_exchange_only_what_the_papers_gpus_exchanged():
  steps = _steps('towers_2x2')
  ops = _collectives(_lowered_train_step(steps))
  model_groups = _axis_groups(steps.mesh, layout_lib.MODEL)
  b = BATCH // 2  # rows per device: split over data, replicated over model
  # Forward: the conv3 input, fc6/fc7/fc8 inputs and the logits, gathered over model, in order.
  gathers = [(o['operands'][0], o['results'][0], o['dim']) for o in ops
             if o['kind'] == 'all_gather']
  assert gathers == [((b, 13, 13, 128), (b, 13, 13, 256), 3),   # conv3 sees both towers
                     ((b, 6, 6, 128), (b, 6, 6, 256), 3),       # fc6 input (pool5)
                     ((b, 2048), (b, 4096), 1),                 # fc7 input
                     ((b, 2048), (b, 4096), 1),                 # fc8 input
                     ((b, NUM_CLASSES // 2), (b, NUM_CLASSES), 1)]  # logits
  assert all(o['groups'] == model_groups for o in ops if o['kind'] == 'all_gather')
  # Backward: the gathers' transposes, the same activations' cotangents scattered back.
  scatters = sorted((o['results'][0], o['operands'][0]) for o in ops
                    if o['kind'] == 'reduce_scatter')
  assert scatters == sorted((g[0], g[1]) for g in gathers)
  assert all(o['groups'] == model_groups for o in ops if o['kind'] == 'reduce_scatter')
  # All-reduces: every gradient over data (on its tower shard), the 3 metrics over the mesh;
  # nothing else, and no all-reduce over model (no conv activation is summed over towers).
  reduces = [o for o in ops if o['kind'] == 'all_reduce']
  grads = [o for o in reduces if o['groups'] == _axis_groups(steps.mesh, layout_lib.DATA)]
  metrics = [o for o in reduces if o['groups'] == _axis_groups(steps.mesh, 'all')]
  assert len(grads) + len(metrics) == len(reduces)
  assert sorted(o['operands'][0] for o in grads) == sorted(
      jax.tree_util.tree_leaves(_param_shard_shapes(steps), is_leaf=lambda x: isinstance(x,
                                                                                         tuple)))
  assert [o['operands'][0] for o in metrics] == [()] * 3
  assert not [o for o in ops if o['kind'] in ('all_to_all', 'collective_permute')]


def test_towers_model2_has_no_gradient_all_reduce():
  """One tower per device and no data axis: gradients need no sync at all."""
  steps = _steps('towers_model2')
  ops = _collectives(_lowered_train_step(steps))
  kinds = [o['kind'] for o in ops]
  assert kinds.count('all_gather') == 5 and kinds.count('reduce_scatter') == 5
  reduces = [o for o in ops if o['kind'] == 'all_reduce']
  # The gradient psum over the size-1 data axis is lowered with one-device groups (XLA drops
  # it; nothing crosses); only the 3 scalar metrics are summed across devices.
  assert [o['operands'][0] for o in reduces if o['groups'] != [[0], [1]]] == [()] * 3
  assert len(reduces) == 3 + 16


def test_one_weird_trick_gathers_the_batch_before_fc6():
  steps = _steps('one_weird_trick_2x2')
  ops = _collectives(_lowered_train_step(steps))
  mesh = steps.mesh
  b = BATCH // 4  # rows per device in the conv layers: split over data and model
  gathers = sorted((o['operands'][0], o['results'][0], o['dim']) for o in ops
                   if o['kind'] == 'all_gather')
  assert gathers == sorted([((b, 6, 6, 256), (2 * b, 6, 6, 256), 0),  # fc6 sees the pair's batch
                            ((b,), (2 * b,), 0),                        # and its labels
                            ((2 * b, 2048), (2 * b, 4096), 1),          # fc7 input
                            ((2 * b, 2048), (2 * b, 4096), 1),          # fc8 input
                            ((2 * b, NUM_CLASSES // 2), (2 * b, NUM_CLASSES), 1)])  # logits
  assert all(o['groups'] == _axis_groups(mesh, layout_lib.MODEL) for o in ops
             if o['kind'] in ('all_gather', 'reduce_scatter'))
  assert len([o for o in ops if o['kind'] == 'reduce_scatter']) == 4  # labels have no cotangent
  reduces = [o for o in ops if o['kind'] == 'all_reduce']
  over_mesh = sorted(o['operands'][0] for o in reduces
                     if o['groups'] == _axis_groups(mesh, 'all') and o['operands'][0])
  over_data = sorted(o['operands'][0] for o in reduces
                     if o['groups'] == _axis_groups(mesh, layout_lib.DATA))
  shards = _param_shard_shapes(steps)
  assert over_mesh == sorted(shards[f'conv{i}'][leaf] for i in range(1, 6)
                             for leaf in ('kernel', 'bias'))
  assert over_data == sorted(shards[f'fc{i}'][leaf] for i in range(6, 9)
                             for leaf in ('kernel', 'bias'))


def test_data_parallel_only_all_reduces_gradients():
  steps = _steps('data4')
  ops = _collectives(_lowered_train_step(steps))
  assert {o['kind'] for o in ops} == {'all_reduce'}
  assert all(o['groups'] == [[0, 1, 2, 3]] for o in ops)
  assert len([o for o in ops if o['operands'][0]]) == 16  # every parameter, whole


# --------------------------------------------------------------------------------------------
# 4. Refusals
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('case, batch_size, ok', [
    ('data4', 6, False), ('data4', 8, True), ('towers_2x2', 6, True),
    ('towers_2x2', 7, False), ('towers_model2', 7, True), ('one_weird_trick_2x2', 6, False)])
def test_check_batch(case, batch_size, ok):
  name, data, model = CASES[case]
  mesh, layout = _mesh(data, model), layout_lib.get_layout(name)
  if ok:
    layout_lib.check_batch(batch_size, mesh, layout)
    return
  shards = data * model if name == 'one_weird_trick' else data
  with pytest.raises(layout_lib.LayoutError,
                     match=rf'batch size {batch_size} does not divide over the {shards} devices'):
    layout_lib.check_batch(batch_size, mesh, layout)


def test_make_mesh_refuses_more_devices_than_exist():
  with pytest.raises(layout_lib.LayoutError, match=r'asks for 4 x 2 = 8 devices but only 4 exist'):
    layout_lib.make_mesh(4, 2)
  with pytest.raises(layout_lib.LayoutError, match=r'asks for 3 x 1 = 3 devices but only 2'):
    layout_lib.make_mesh(3, 1, devices=jax.devices()[:2])
  with pytest.raises(layout_lib.LayoutError, match=r'must use all 4 devices'):
    layout_lib.make_mesh(-1, 3)
  with pytest.raises(layout_lib.LayoutError, match=r'at most one'):
    layout_lib.make_mesh(-1, -1)
  assert dict(layout_lib.make_mesh(-1, 2).shape) == {'data': 2, 'model': 2}


def test_towers_refuse_a_model_axis_of_4():
  mesh = _mesh(1, 4)
  with pytest.raises(layout_lib.LayoutError, match=r'mesh.model must be 1 or 2, not 4'):
    layout_lib.check_model(MODEL, mesh, layout_lib.get_layout('towers'))
  abstract = jax.eval_shape(lambda rng: steps_lib.create_train_state(rng, MODEL, TX),
                            jax.random.PRNGKey(0))
  with pytest.raises(layout_lib.LayoutError, match=r'one tower per device'):
    layout_lib.make_steps(MODEL, TX, mesh, layout_lib.get_layout('towers'), abstract)
  # The one weird trick splits only the fc layers: 4 ways is fine when the classes divide.
  trick = layout_lib.get_layout('one_weird_trick')
  layout_lib.check_model(MODEL.clone(num_classes=1000), mesh, trick)
  with pytest.raises(layout_lib.LayoutError, match=r'fc8 has 10 outputs'):
    layout_lib.check_model(MODEL, mesh, trick)


def test_towers_refuse_lrn_windows_that_cross_the_towers():
  """Each tower's device normalises only its own maps, so LRN groups must not span towers."""
  # Why: with one group over 96 maps, the windows of maps 46..49 reach into the other tower.
  x = np.random.default_rng(0).normal(0.0, 30.0, (2, 3, 3, 96)).astype(np.float32)
  per_tower = np.concatenate([model_lib.local_response_norm(x[..., :48], groups=1),
                              model_lib.local_response_norm(x[..., 48:], groups=1)], axis=-1)
  assert not np.allclose(model_lib.local_response_norm(x, groups=1), per_tower, rtol=1e-3)
  np.testing.assert_allclose(model_lib.local_response_norm(x, groups=2), per_tower, rtol=1e-6)
  towers, trick = layout_lib.get_layout('towers'), layout_lib.get_layout('one_weird_trick')
  with pytest.raises(layout_lib.LayoutError, match=r'lrn_groups=1 lets LRN windows cross'):
    layout_lib.check_model(MODEL.clone(lrn_groups=1), _mesh(1, 2), towers)
  layout_lib.check_model(MODEL.clone(lrn_groups=4), _mesh(1, 2), towers)
  layout_lib.check_model(MODEL.clone(lrn_groups=1, use_lrn=False), _mesh(1, 2), towers)
  layout_lib.check_model(MODEL.clone(lrn_groups=1), _mesh(2, 1), towers)  # no towers split
  layout_lib.check_model(MODEL.clone(lrn_groups=1), _mesh(2, 2), trick)  # convs replicated


def test_unknown_layout_is_refused():
  with pytest.raises(layout_lib.LayoutError, match=r"Unknown layout 'pipeline'.*one_weird_trick"):
    layout_lib.get_layout('pipeline')


# --------------------------------------------------------------------------------------------
# 5. A state moves between layouts
# --------------------------------------------------------------------------------------------
def test_state_moves_from_data_parallel_to_towers_and_trains_on():
  """Step 1 under data=2, a host round trip, step 2 under towers model=2 == step 2 on data=2.

  The in-memory half of "a checkpoint saved under data=2 restores under model=2": the full
  parameter tree and the momentum slots are the same whatever the layout, so the moved state
  continues exactly as the one that stayed.
  """
  inputs, reference = _inputs(), _reference()
  data2, towers = _steps('data2'), _steps('towers_model2')
  # (This step's result is compared with the reference by the run fixture's tests.)
  state, _ = _step(data2, inputs.state, inputs.train_batches[0])
  host = jax.device_get(state)
  del state
  chex.assert_trees_all_equal_shapes_and_dtypes(host, reference.states[0])
  stayed, stayed_metrics = _step(data2, host, inputs.train_batches[1])
  stayed = jax.device_get(stayed)
  moved_in = layout_lib.place_state(host, towers)
  assert moved_in.params['fc6']['kernel'].addressable_shards[0].data.shape == (9216, 2048)
  assert _update(moved_in)['fc6']['kernel'].addressable_shards[1].data.shape == (9216, 2048)
  del moved_in
  moved, moved_metrics = _step(towers, host, inputs.train_batches[1])
  _assert_same_step(jax.device_get(moved), moved_metrics, stayed, stayed_metrics,
                    'data=2 -> towers model=2, step 2')


def test_towers_refuse_single_tower_presets():
  """torchvision's conv2/4/5 see every map (one group): a device holding one tower cannot run
  them; the one weird trick (convs replicated) can. bvlc's LRN windows cross the towers."""
  towers, trick = layout_lib.get_layout('towers'), layout_lib.get_layout('one_weird_trick')
  torchvision = model_lib.preset('torchvision', num_classes=NUM_CLASSES)
  with pytest.raises(layout_lib.LayoutError, match=r'conv2 has 1 group'):
    layout_lib.check_model(torchvision, _mesh(1, 2), towers)
  layout_lib.check_model(torchvision, _mesh(1, 2), trick)
  with pytest.raises(layout_lib.LayoutError, match=r'lrn_groups=1 lets LRN windows cross'):
    layout_lib.check_model(model_lib.preset('bvlc', num_classes=NUM_CLASSES), _mesh(1, 2), towers)
