"""Resume or init: the workdir's identity and where a training run starts.

A run's checkpoints say which network they hold (:func:`architecture`, saved in every meta and
compared before a restore: a workdir of another network is refused); :class:`LoopState` is
what a checkpoint's meta holds of the loop and goes to and from it; :func:`resume_or_init`
picks the newest intact checkpoint (adapting it to a changed learning rate or batch size) or a
fresh state, from ``config.init_from``'s weights when given. The loop itself is in
``trainer.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import pretrained
from alexnet_jax import steps as steps_lib

if TYPE_CHECKING:  # the trainer imports this module: its Setup is named for the types only
  from alexnet_jax.trainer import Setup  # pylint: disable=g-import-not-at-top

# AlexNet fields that do not change the function a checkpoint's parameters compute: how it is
# computed (the *_impl and *_grad options, the compute dtype), where (the model axis), and the
# starting point (init_scheme). Every other field -- new ones included -- is the architecture.
_NOT_ARCHITECTURE = frozenset({'dtype', 'param_dtype', 'model_axis', 'model_parallel_convs',
                               'model_parallel_fcs', 'init_scheme', 'parent', 'name'})


def architecture_fields() -> list[str]:
  """The AlexNet fields a workdir's checkpoints are bound to (see :func:`architecture`)."""
  return [f.name for f in dataclasses.fields(model_lib.AlexNet)
          if f.name not in _NOT_ARCHITECTURE and not f.name.endswith(('_impl', '_grad'))]


def architecture(model: model_lib.AlexNet, crop_size: int) -> dict[str, Any]:
  """The network a checkpoint holds, as saved in its meta: the architecture fields and crop."""
  def plain(value):
    return list(value) if isinstance(value, tuple) else value
  fields = {f'model.{name}': plain(getattr(model, name)) for name in architecture_fields()}
  fields['data.crop_size'] = int(crop_size)
  return json.loads(json.dumps(fields, default=str))


def imported_weights(config: ml_collections.ConfigDict, workdir: str | None = None,
                     start_over: bool = False):
  """``(config, convert)``: for ``config.init_from``, the config with the file's preset and
  preprocessing, and a function that returns the file's params converted to the network's
  (called only by a run that starts from scratch); else ``(config, None)``.

  When ``workdir``'s checkpoints record their network (a resume, unless ``start_over``), the
  file's network is taken from that record and the file is not opened at all.
  """
  if not config.init_from:
    return config, None
  record = None if start_over or workdir is None else checkpoint_lib.recorded_network(workdir)
  model, convert = pretrained.load(config.init_from, record)
  return pretrained.resolve_config(config, model), convert


def initial_state(s: Setup, imported: Callable[[], dict] | None = None) -> steps_lib.TrainState:
  """A fresh train state; with ``imported`` (config.init_from's params, converted when called),
  those in every layer whose shape fits (all but a resized fc8)."""
  state = s.init_state(jax.random.PRNGKey(s.config.seed))
  if imported is None:
    return state
  log = print if jax.process_index() == 0 else lambda _: None
  params = pretrained.start_params(jax.device_get(state.params), imported(), log)
  return state.replace(params=jax.device_put(params, s.steps.state_sharding.params))


def abstract_sharded(s: Setup) -> Any:
  """The restore target: ``s``'s abstract train state with the steps' state shardings."""
  return checkpoint_lib.abstract_like(s.abstract_state, s.steps.state_sharding)


@dataclasses.dataclass
class LoopState:
  """Where the training loop is: the train state and everything a checkpoint's meta holds.

  ``loss_window`` and ``loss_since_eval`` are running [sum, count] pairs of training losses
  (since the last train record and since the last evaluation), so that a resumed run logs the
  same numbers as an uninterrupted one. ``saved_step`` is the newest checkpoint on disk (None
  before the first save); it is not part of the meta.
  """
  state: steps_lib.TrainState
  policy_state: dict
  step: int = 0
  epoch: int = 0
  step_in_epoch: int = 0
  loss_window: list = dataclasses.field(default_factory=lambda: [0.0, 0])
  loss_since_eval: list = dataclasses.field(default_factory=lambda: [0.0, 0])
  last_eval: dict = dataclasses.field(default_factory=dict)
  saved_step: int | None = None

  def to_meta(self, config: ml_collections.ConfigDict, network: dict) -> dict:
    """The checkpoint's JSON meta: the data position, the policy state, the loss sums, and
    ``network`` (:func:`architecture`), which a later run compares with its own."""
    return {'architecture': network, 'epoch': self.epoch, 'step_in_epoch': self.step_in_epoch,
            'batch_size': config.batch_size,
            'lr_policy': {k: float(v) for k, v in self.policy_state.items()},
            'config_learning_rate': float(config.optim.learning_rate),
            'loss_window': list(self.loss_window), 'loss_since_eval': list(self.loss_since_eval),
            'last_eval': self.last_eval}

  @classmethod
  def from_checkpoint(cls, step: int, state: steps_lib.TrainState, meta: dict) -> LoopState:
    """The loop state a checkpoint (``step``, its state and :meth:`to_meta`'s meta) holds."""
    # .get: the meta of checkpoints saved by earlier versions lacks the loss sums.
    return cls(state=state, step=int(step), epoch=int(meta['epoch']),
               step_in_epoch=int(meta['step_in_epoch']),
               policy_state=optim.policy_state_to_numpy(
                   {k: np.asarray(v) for k, v in meta['lr_policy'].items()}),
               loss_window=list(meta.get('loss_window', [0.0, 0])),
               loss_since_eval=list(meta.get('loss_since_eval', [0.0, 0])),
               last_eval=dict(meta.get('last_eval', {})), saved_step=int(step))

  def add_losses(self, losses: list[float]) -> None:
    self.loss_window = [self.loss_window[0] + sum(losses), self.loss_window[1] + len(losses)]
    self.loss_since_eval = [self.loss_since_eval[0] + sum(losses),
                            self.loss_since_eval[1] + len(losses)]

  def epoch_position(self, steps_per_epoch: int) -> float:
    """Epochs done, as a fraction (the x axis of the metrics)."""
    return self.epoch + self.step_in_epoch / steps_per_epoch


def resume_or_init(s: Setup, ckpts: checkpoint_lib.Checkpoints, policy, network: dict,
                   steps_per_epoch: int, imported: Callable[[], dict] | None = None,
                   verbose: bool = False) -> LoopState:
  """The newest intact checkpoint's loop state, or a fresh one (step 0).

  Only a checkpoint of ``network`` (:func:`architecture`) is restored
  (:meth:`~alexnet_jax.checkpoint.Checkpoints.restore_latest_intact` refuses another). A
  fresh state starts from ``imported`` (:func:`imported_weights`) when given. ``verbose``
  (process 0) prints where it resumes and what it adapted.
  """
  restored = ckpts.restore_latest_intact(abstract_sharded(s), network)
  if restored is None:
    return LoopState(state=initial_state(s, imported),
                     policy_state=policy.init(s.config.optim.learning_rate))
  step, state, meta = restored
  loop = LoopState.from_checkpoint(step, state, meta)
  if verbose:
    print(f'Resuming from checkpoint at step {step} (epoch {loop.epoch}, step '
          f'{loop.step_in_epoch} of the epoch) in {ckpts.directory}.', flush=True)
  loop.policy_state = rescale_learning_rate(policy, loop.policy_state, meta, s.config, verbose)
  batch_size = s.config.batch_size
  # .get: checkpoints of versions before a resume could change the batch size lack it.
  old_batch = int(meta.get('batch_size', batch_size))
  if old_batch != batch_size:
    loop.step_in_epoch = position_for_batch_size(loop.step_in_epoch, old_batch, batch_size,
                                                 steps_per_epoch)
    if verbose:
      print(f'The batch size is {batch_size}, not {old_batch} as in the checkpoint: the '
            f'epoch continues at batch {loop.step_in_epoch} of {steps_per_epoch}.', flush=True)
  return loop


def position_for_batch_size(step_in_epoch: int, old_batch: int, new_batch: int,
                            steps_per_epoch: int) -> int:
  """Where a resumed epoch continues when the batch size changed.

  At the first new batch that starts at or after the examples already seen (an epoch's example
  order does not depend on the batch size), but never past the epoch's last batch, so that the
  epoch still ends, evaluates and saves.
  """
  seen = step_in_epoch * old_batch
  return min(-(-seen // new_batch), steps_per_epoch - 1)


def rescale_learning_rate(policy, policy_state, meta, config, verbose: bool):
  """A resumed run whose config changes the learning rate scales the checkpoint's schedule.

  The checkpoint's policy state holds the current rate (after any decays); a new
  ``config.optim.learning_rate`` multiplies it by new/old, so lowering the rate after a
  divergence, or by hand as the paper did, takes effect from the resumed step on.
  """
  # .get: checkpoints of versions before a resume could change the rate lack it.
  old = meta.get('config_learning_rate')
  new = float(config.optim.learning_rate)
  if old is None or float(old) == new or float(old) <= 0:
    return policy_state
  scale = new / float(old)
  before = policy.learning_rate(policy_state)
  policy_state = {k: (v * scale if k in ('learning_rate', 'base_lr') else v)
                  for k, v in policy_state.items()}
  if verbose:
    print(f'config.optim.learning_rate is {new:g}, not {float(old):g} as in the checkpoint: the '
          f'rate goes from {before:.3g} to {policy.learning_rate(policy_state):.3g}.', flush=True)
  return policy_state
