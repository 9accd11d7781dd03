"""alexnet_jax.unrolled_threefry: the init compiled with the unrolled Threefry
(``steps.jit_create_train_state``, the main job's) gives the same parameters, to the bit, as
JAX's own CPU lowering, and the swap really happens and is undone."""
import jax
import numpy as np

from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import steps as steps_lib
from alexnet_jax import unrolled_threefry

MODEL = model_lib.AlexNet(num_classes=10)
TX = optim.sgd_with_injected_lr(0.01)


def _create(rng):
  return steps_lib.create_train_state(rng, MODEL, TX, (1, 67, 67, 3))


def _bits(tree) -> list[np.ndarray]:
  return [np.asarray(x).reshape(-1).view(np.uint8) for x in jax.tree_util.tree_leaves(tree)]


def test_the_init_is_the_same_to_the_bit_and_its_loops_are_unrolled():
  # Two function objects: jit keeps one lowering per function (and input shapes), whatever the
  # rules when it was made.
  key = jax.random.PRNGKey(3)
  rolled = jax.jit(lambda k: _create(k))  # pylint: disable=unnecessary-lambda
  unrolled = steps_lib.jit_create_train_state(MODEL, TX, (1, 67, 67, 3))  # the main job's
  # JAX's CPU form hashes in loops; the swapped rule has none (the init has no other loop).
  assert 'stablehlo.while' in rolled.lower(key).as_text()
  assert 'stablehlo.while' not in unrolled.lower(key).as_text()
  expected, got = rolled(key), unrolled(key)
  assert jax.tree_util.tree_structure(expected) == jax.tree_util.tree_structure(got)
  for a, b in zip(_bits(expected), _bits(got)):
    np.testing.assert_array_equal(a, b)
  assert unrolled._cache_size() == 1  # pylint: disable=protected-access  (jit's, delegated)


def test_the_cpu_rule_is_put_back_after_the_block():
  def lowered_text():  # a new function each time (see above)
    return jax.jit(lambda k: jax.random.normal(k, (3, 5))).lower(jax.random.PRNGKey(0)).as_text()
  with unrolled_threefry.on_cpu():
    inside = lowered_text()
  assert 'stablehlo.while' not in inside
  assert 'stablehlo.while' in lowered_text()
