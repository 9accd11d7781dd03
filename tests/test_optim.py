"""Tests of alexnet_jax.optim: the paper's SGD rule against float64 numpy, and the rate policies."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from alexnet_jax import optim

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
LR1, LR2 = 0.01, 0.001  # A change of rate between the two steps: where the rules differ.


def _params_and_grads():
  rng = np.random.default_rng(0)
  params = {'conv': {'kernel': rng.normal(size=(3, 4)), 'bias': rng.normal(size=(4,))},
            'fc': {'kernel': rng.normal(size=(4, 2)), 'bias': rng.normal(size=(2,))}}
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), params) for _ in range(2)]
  return params, grads


def _paper_reference(params, grads, rates, decay_biases=False):
  """The paper's rule in float64 numpy: v <- m v - wd lr w - lr g; w <- w + v."""
  out = {}
  for layer, leaves in params.items():
    out[layer] = {}
    for name, w in leaves.items():
      w = np.array(w, np.float64)
      v = np.zeros_like(w)
      wd = WEIGHT_DECAY if (name != 'bias' or decay_biases) else 0.0
      for g, lr in zip(grads, rates):
        v = MOMENTUM * v - wd * lr * w - lr * g[layer][name]
        w = w + v
      out[layer][name] = w
  return out


def _to32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _run_injected(tx, params, grads, rates):
  params = _to32(params)
  state = tx.init(params)
  for g, lr in zip(grads, rates):
    state = optim.set_learning_rate(state, lr)
    updates, state = tx.update(_to32(g), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _assert_moved_like(result, reference, start):
  """Compare the parameter *changes* (small next to the parameters) at float32 precision."""
  jax.tree.map(lambda r, ref, s: np.testing.assert_allclose(
      np.asarray(r, np.float64) - s, ref - s, rtol=2e-5, atol=1e-7), result, reference, start)


@pytest.mark.parametrize('decay_biases', [False, True])
def test_two_steps_with_rate_change_match_paper_rule(decay_biases):
  params, grads = _params_and_grads()
  tx = optim.sgd_with_injected_lr(LR1, MOMENTUM, WEIGHT_DECAY, decay_biases=decay_biases)
  result = _run_injected(tx, params, grads, [LR1, LR2])
  _assert_moved_like(result, _paper_reference(params, grads, [LR1, LR2], decay_biases), params)


def test_biases_not_decayed_by_default():
  # With a zero gradient only weight decay moves a parameter: biases stay put, kernels shrink.
  params, _ = _params_and_grads()
  tx = optim.sgd(LR1, MOMENTUM, WEIGHT_DECAY)
  params32 = _to32(params)
  zeros = jax.tree.map(jnp.zeros_like, params32)
  updates, _ = tx.update(zeros, tx.init(params32), params32)
  for layer in params:
    np.testing.assert_array_equal(updates[layer]['bias'], 0.0)
    np.testing.assert_allclose(updates[layer]['kernel'],
                               -LR1 * WEIGHT_DECAY * params[layer]['kernel'], rtol=1e-6)
  tx = optim.sgd(LR1, MOMENTUM, WEIGHT_DECAY, decay_biases=True)
  updates, _ = tx.update(zeros, tx.init(params32), params32)
  np.testing.assert_allclose(updates['fc']['bias'], -LR1 * WEIGHT_DECAY * params['fc']['bias'],
                             rtol=1e-6)


def test_optax_sgd_differs_after_rate_change_and_agrees_before():
  params, grads = _params_and_grads()
  decayed_optax_sgd = lambda learning_rate: optax.chain(
      optax.add_decayed_weights(WEIGHT_DECAY, mask=optim.weight_decay_mask),
      optax.sgd(learning_rate, momentum=MOMENTUM))
  theirs_tx = optax.inject_hyperparams(decayed_optax_sgd)(learning_rate=LR1)
  ours_tx = optim.sgd_with_injected_lr(LR1, MOMENTUM, WEIGHT_DECAY)
  ours = _run_injected(ours_tx, params, grads, [LR1, LR2])
  theirs = _run_injected(theirs_tx, params, grads, [LR1, LR2])
  # optax.sgd's second update is -lr2 * (m g1 + g2) instead of -(m lr1 g1 + lr2 g2): the gap is
  # m (lr1 - lr2) g1, about 1e-2 here, far above float32 noise.
  gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ours),
                                                              jax.tree.leaves(theirs)))
  assert gap > 1e-3
  # With a constant rate the two rules are the same.
  ours = _run_injected(ours_tx, params, grads, [LR1, LR1])
  theirs = _run_injected(theirs_tx, params, grads, [LR1, LR1])
  chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_schedule_valued_learning_rate():
  params, grads = _params_and_grads()
  schedule = optax.piecewise_constant_schedule(LR1, {1: LR2 / LR1})
  tx = optim.sgd(schedule, MOMENTUM, WEIGHT_DECAY)
  p = _to32(params)
  state = tx.init(p)
  update = jax.jit(tx.update)
  for g in grads:
    updates, state = update(_to32(g), state, p)
    p = optax.apply_updates(p, updates)
  _assert_moved_like(p, _paper_reference(params, grads, [LR1, LR2]), params)


def test_set_learning_rate_is_pure_and_does_not_retrace():
  params, grads = _params_and_grads()
  params = _to32(params)
  tx = optim.sgd_with_injected_lr(LR1)
  state = tx.init(params)
  assert optim.get_learning_rate(state) == pytest.approx(LR1)
  new_state = optim.set_learning_rate(state, LR2)
  assert optim.get_learning_rate(new_state) == pytest.approx(LR2)
  assert optim.get_learning_rate(state) == pytest.approx(LR1)  # The input is untouched.
  chex.assert_trees_all_equal_structs(state, new_state)
  chex.assert_trees_all_equal_dtypes(state, new_state)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  p, s = step(params, state, _to32(grads[0]))
  s = optim.set_learning_rate(s, LR2)
  step(p, s, _to32(grads[1]))


def test_set_learning_rate_keeps_sharding():
  mesh = jax.make_mesh((4,), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  tx = optim.sgd_with_injected_lr(LR1)
  state = jax.device_put(tx.init({'w': jnp.ones((4, 4))}), replicated)
  new = optim.set_learning_rate(state, LR2)
  assert new.hyperparams['learning_rate'].sharding == replicated


def test_get_learning_rate_without_injection_says_what_to_do():
  state = optim.sgd(LR1).init({'w': jnp.ones(2)})
  with pytest.raises(ValueError, match='sgd_with_injected_lr'):
    optim.get_learning_rate(state)


def _optim_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      learning_rate=0.01, momentum=0.9, weight_decay=5e-4, decay_biases=False,
      lr_policy='plateau', plateau_patience=2, plateau_factor=0.1, plateau_max_decays=3,
      plateau_min_delta=0.0, step_epochs=(30, 60, 80), step_factor=0.1))
  config.update(overrides)
  return config


def test_make_optimizer_from_config():
  tx = optim.make_optimizer(_optim_config(learning_rate=0.02))
  assert optim.get_learning_rate(tx.init({'w': jnp.ones(2)})) == pytest.approx(0.02)


def test_plateau_policy_scripted_sequence():
  policy = optim.make_lr_policy(_optim_config())
  assert isinstance(policy, optim.PlateauPolicy)
  state = policy.init(1.0)
  # (validation error, expected rate after this evaluation), patience 2, at most 3 decays.
  script = [
      (0.90, 1.0), (0.80, 1.0),        # improving
      (0.85, 1.0), (0.82, 0.1),        # two evaluations without improvement: first decay
      (0.81, 0.1), (0.81, 0.01),       # the count restarted after the decay: second decay
      (0.70, 0.01), (0.70, 0.01),      # equal is not an improvement
      (0.70, 0.001),                   # third decay
      (0.90, 0.001), (0.90, 0.001), (0.90, 0.001), (0.90, 0.001),  # no fourth
  ]
  for i, (error, expected) in enumerate(script):
    state = policy.update(state, epoch=i + 1, val_top1_error=error)
    assert policy.learning_rate(state) == pytest.approx(expected, rel=1e-12), i
  assert int(state['num_decays']) == 3
  assert float(state['best_error']) == pytest.approx(0.70)
  # An epoch without an evaluation changes nothing.
  assert policy.update(state, epoch=20) == state


def test_plateau_min_delta():
  policy = optim.PlateauPolicy(patience=1, min_delta=0.01)
  state = policy.update(policy.init(1.0), val_top1_error=0.5)
  assert policy.learning_rate(policy.update(state, val_top1_error=0.495)) == pytest.approx(0.1)
  assert policy.learning_rate(policy.update(state, val_top1_error=0.485)) == pytest.approx(1.0)


def test_steps_policy_at_boundaries():
  policy = optim.make_lr_policy(_optim_config(lr_policy='steps'))
  assert isinstance(policy, optim.StepsPolicy)
  state = policy.init(0.01)
  for epoch, expected in [(0, 1e-2), (29, 1e-2), (30, 1e-3), (59.5, 1e-3), (60, 1e-4),
                          (79, 1e-4), (80, 1e-5), (100, 1e-5)]:
    state = policy.update(state, epoch=epoch, val_top1_error=0.5)
    assert policy.learning_rate(state) == pytest.approx(expected, rel=1e-12), epoch


def test_unknown_policy_raises():
  with pytest.raises(ValueError, match="lr_policy 'cosine'"):
    optim.make_lr_policy(_optim_config(lr_policy='cosine'))


@pytest.mark.parametrize('name', ['plateau', 'steps', 'constant'])
def test_policy_state_round_trip(name):
  policy = optim.make_lr_policy(_optim_config(lr_policy=name))
  state = policy.init(0.01)
  for epoch, error in enumerate([0.9, 0.8, 0.85], start=1):
    state = policy.update(state, epoch=epoch * 20, val_top1_error=error)
  # Through 0-d numpy arrays and a plain dict of python numbers (as a checkpoint might return it).
  via_numpy = optim.policy_state_to_numpy(jax.tree.map(np.asarray, state))
  via_python = {k: v.item() for k, v in state.items()}
  for restored in (via_numpy, via_python):
    a = policy.update(state, epoch=70, val_top1_error=0.86)
    b = policy.update(restored, epoch=70, val_top1_error=0.86)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
      assert np.asarray(b[k]).shape == ()


def test_policy_state_survives_orbax_checkpoint(tmp_path):
  orbax = pytest.importorskip('orbax.checkpoint')
  policy = optim.PlateauPolicy(patience=2)
  state = policy.init(0.01)  # best_error is inf before the first evaluation.
  checkpointer = orbax.PyTreeCheckpointer()
  checkpointer.save(tmp_path / 'policy', state)
  restored = optim.policy_state_to_numpy(checkpointer.restore(tmp_path / 'policy'))
  for error in [0.5, 0.6, 0.6]:
    state = policy.update(state, val_top1_error=error)
    restored = policy.update(restored, val_top1_error=error)
  assert restored == state
  assert policy.learning_rate(restored) == pytest.approx(0.001)
