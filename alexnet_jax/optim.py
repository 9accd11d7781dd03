"""The paper's SGD and its learning-rate policies.

The update (paper, section 5), for every weight ``w`` with gradient ``g`` and rate ``lr``::

    v <- momentum * v - weight_decay * lr * w - lr * g
    w <- w + v

The rate multiplies the gradient *before* it enters the momentum. ``optax.sgd`` accumulates
the raw gradient and multiplies the momentum sum by the current rate instead: the two agree
while the rate is constant and differ after every change of rate (the paper changed it three
times by hand).

The rate is changed on the host between steps: build the optimizer with
:func:`sgd_with_injected_lr` (``optax.inject_hyperparams`` over :func:`sgd`), keep its state in
the train state, and set a new rate with :func:`set_learning_rate` when a policy says so.
Policies (:class:`PlateauPolicy`, the paper's; :class:`StepsPolicy`; :class:`ConstantPolicy`)
are pure host-side objects whose state is a flat dict of numpy scalars, ready for a checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

PolicyState = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------------
def _leaf_name(path) -> str | None:
  """Name of the last key of a pytree path (a dict key or an attribute name)."""
  if not path:
    return None
  last = path[-1]
  for attr in ('key', 'name'):
    if hasattr(last, attr):
      return str(getattr(last, attr))
  return None


def weight_decay_mask(params: Any, decay_biases: bool = False) -> Any:
  """A tree of bools like ``params``: True where weight decay applies.

  Every leaf is decayed except those named 'bias' (unless ``decay_biases``): the paper's decay
  is a regulariser on the weights; decaying biases only pulls the ReLU offsets towards zero.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decay_biases or _leaf_name(path) != 'bias', params)


def sgd(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
        weight_decay: float = 5e-4, decay_biases: bool = False) -> optax.GradientTransformation:
  """The paper's momentum SGD with weight decay (see the module docstring for the rule).

  Args:
    learning_rate: a float, or an optax schedule (step count -> rate).
    momentum: the momentum coefficient (0.9 in the paper).
    weight_decay: the decay coefficient (0.0005 in the paper), scaled by the rate.
    decay_biases: also decay leaves named 'bias' (the paper is silent; off by default).

  Returns:
    A transformation whose updates are added to the parameters (``optax.apply_updates``).
  """
  return optax.chain(
      # g + wd * w, only on kernels by default.
      optax.add_decayed_weights(weight_decay,
                                mask=lambda p: weight_decay_mask(p, decay_biases)),
      # -lr * (g + wd * w): the rate enters before the momentum, unlike optax.sgd.
      optax.scale_by_learning_rate(learning_rate),
      # v <- momentum * v + (-lr * (g + wd * w)); the update is v.
      optax.trace(decay=momentum),
  )


def sgd_with_injected_lr(learning_rate: float, momentum: float = 0.9, weight_decay: float = 5e-4,
                         decay_biases: bool = False) -> optax.GradientTransformation:
  """:func:`sgd` with the rate held in the optimizer state, so the host can change it.

  The state is an ``optax.InjectHyperparamsState`` whose ``hyperparams['learning_rate']`` is the
  current rate; read and change it with :func:`get_learning_rate` and
  :func:`set_learning_rate`. Only the rate is injected: momentum and weight decay stay
  constants of the traced update.
  """
  return optax.inject_hyperparams(sgd, static_args=('momentum', 'weight_decay'))(
      learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
      decay_biases=decay_biases)


_NO_INJECTED_RATE = ('This optimizer state holds no injected learning rate; build the '
                     'optimizer with optim.sgd_with_injected_lr.')


def get_learning_rate(opt_state: Any) -> float:
  """The current rate of an optimizer built with :func:`sgd_with_injected_lr`."""
  rate = optax.tree_utils.tree_get(opt_state, 'learning_rate')
  if rate is None:
    raise ValueError(_NO_INJECTED_RATE)
  return float(np.asarray(jax.device_get(rate)))


def set_learning_rate(opt_state: Any, learning_rate: float) -> Any:
  """A copy of ``opt_state`` with its injected rate replaced (the input is not modified).

  The new value keeps the dtype, and for a placed ``jax.Array`` the sharding, of the old one,
  so a jitted step with fixed input shardings neither recompiles nor rejects the new state.
  """
  old = optax.tree_utils.tree_get(opt_state, 'learning_rate')
  if old is None:
    raise ValueError(_NO_INJECTED_RATE)
  new = np.asarray(learning_rate, dtype=np.asarray(jax.device_get(old)).dtype)
  if isinstance(old, jax.Array):
    new = jax.device_put(new, old.sharding)
  return optax.tree_utils.tree_set(opt_state, learning_rate=new)


def make_optimizer(config_optim) -> optax.GradientTransformation:
  """The injected-rate :func:`sgd` from ``config.optim`` (learning_rate, momentum, ...)."""
  return sgd_with_injected_lr(
      learning_rate=float(config_optim.learning_rate),
      momentum=float(config_optim.momentum),
      weight_decay=float(config_optim.weight_decay),
      decay_biases=bool(config_optim.decay_biases))


# --------------------------------------------------------------------------------------------
# Learning-rate policies (host side)
# --------------------------------------------------------------------------------------------
def _f(x) -> float:
  return float(np.asarray(x))


def _i(x) -> int:
  return int(np.asarray(x))


@dataclasses.dataclass(frozen=True)
class ConstantPolicy:
  """The rate never changes."""

  def init(self, base_lr: float) -> PolicyState:
    return {'learning_rate': np.float64(base_lr)}

  def update(self, state: Mapping[str, Any], *, epoch: float | None = None,
             val_top1_error: float | None = None) -> PolicyState:
    del epoch, val_top1_error
    return {k: np.asarray(v)[()] for k, v in state.items()}

  def learning_rate(self, state: Mapping[str, Any]) -> float:
    return _f(state['learning_rate'])


@dataclasses.dataclass(frozen=True)
class PlateauPolicy:
  """The paper's rule: divide the rate when the validation error stops improving.

  Each call of :meth:`update` with a ``val_top1_error`` is one evaluation. An evaluation
  improves when its error is below the best so far by more than ``min_delta``. After
  ``patience`` evaluations in a row without improvement the rate is multiplied by ``factor``
  and the count starts again (the best error is kept), at most ``max_decays`` times (the
  paper divided by 10 three times).
  """
  patience: int = 1
  factor: float = 0.1
  max_decays: int = 3
  min_delta: float = 0.0

  def __post_init__(self):
    if self.patience < 1:
      raise ValueError(f'plateau_patience must be at least 1, got {self.patience}.')
    if not 0.0 < self.factor <= 1.0:
      raise ValueError(f'plateau_factor must be in (0, 1], got {self.factor}.')
    if self.max_decays < 0:
      raise ValueError(f'plateau_max_decays must be at least 0, got {self.max_decays}.')

  def init(self, base_lr: float) -> PolicyState:
    return {
        'learning_rate': np.float64(base_lr),
        'best_error': np.float64(np.inf),
        'bad_evals': np.int64(0),
        'num_decays': np.int64(0),
    }

  def update(self, state: Mapping[str, Any], *, epoch: float | None = None,
             val_top1_error: float | None = None) -> PolicyState:
    """The state after one more evaluation (unchanged when ``val_top1_error`` is None)."""
    del epoch
    lr = _f(state['learning_rate'])
    best = _f(state['best_error'])
    bad = _i(state['bad_evals'])
    decays = _i(state['num_decays'])
    if val_top1_error is not None:
      error = float(val_top1_error)
      if error < best - self.min_delta:
        best, bad = error, 0
      else:
        bad += 1
      if bad >= self.patience and decays < self.max_decays:
        lr *= self.factor
        decays += 1
        bad = 0
    return {'learning_rate': np.float64(lr), 'best_error': np.float64(best),
            'bad_evals': np.int64(bad), 'num_decays': np.int64(decays)}

  def learning_rate(self, state: Mapping[str, Any]) -> float:
    return _f(state['learning_rate'])


@dataclasses.dataclass(frozen=True)
class StepsPolicy:
  """Multiply the base rate by ``factor`` at each epoch boundary passed.

  ``epoch`` in :meth:`update` is the number of epochs completed: after the boundary ``b`` epochs
  the rate is ``base * factor ** (number of boundaries <= epoch)``.
  """
  boundaries: tuple[float, ...] = ()
  factor: float = 0.1

  def __post_init__(self):
    b = tuple(float(x) for x in self.boundaries)
    if list(b) != sorted(b):
      raise ValueError(f'step_epochs must be increasing, got {self.boundaries}.')
    object.__setattr__(self, 'boundaries', b)

  def init(self, base_lr: float) -> PolicyState:
    return {'base_lr': np.float64(base_lr), 'learning_rate': np.float64(base_lr),
            'epoch': np.float64(0.0)}

  def update(self, state: Mapping[str, Any], *, epoch: float | None = None,
             val_top1_error: float | None = None) -> PolicyState:
    """The state for ``epoch`` completed epochs (unchanged when ``epoch`` is None)."""
    del val_top1_error
    base = _f(state['base_lr'])
    if epoch is None:
      epoch = _f(state['epoch'])
    passed = sum(1 for b in self.boundaries if epoch >= b)
    return {'base_lr': np.float64(base),
            'learning_rate': np.float64(base * self.factor ** passed),
            'epoch': np.float64(epoch)}

  def learning_rate(self, state: Mapping[str, Any]) -> float:
    return _f(state['learning_rate'])


LR_POLICIES = ('plateau', 'steps', 'constant')


def make_lr_policy(config_optim) -> PlateauPolicy | StepsPolicy | ConstantPolicy:
  """The policy named by ``config.optim.lr_policy`` ('plateau', 'steps' or 'constant')."""
  name = config_optim.lr_policy
  o = config_optim
  if name == 'plateau':
    return PlateauPolicy(patience=int(o.plateau_patience), factor=float(o.plateau_factor),
                         max_decays=int(o.plateau_max_decays),
                         min_delta=float(o.plateau_min_delta))
  if name == 'steps':
    return StepsPolicy(boundaries=tuple(o.step_epochs), factor=float(o.step_factor))
  if name == 'constant':
    return ConstantPolicy()
  raise ValueError(f'Unknown config.optim.lr_policy {name!r}; use one of {LR_POLICIES}.')


def policy_state_to_numpy(state: Mapping[str, Any]) -> PolicyState:
  """Normalise a policy state read back from a checkpoint (arrays, jax arrays) to numpy scalars."""
  return {k: np.asarray(jax.device_get(v))[()] for k, v in state.items()}


__all__ = [
    'sgd', 'sgd_with_injected_lr', 'weight_decay_mask', 'get_learning_rate', 'set_learning_rate',
    'make_optimizer', 'PlateauPolicy', 'StepsPolicy', 'ConstantPolicy', 'make_lr_policy',
    'policy_state_to_numpy', 'LR_POLICIES',
]
