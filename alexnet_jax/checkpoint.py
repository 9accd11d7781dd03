"""Orbax checkpoints of a run, and the run's saved config.

``<workdir>/checkpoints/<step>/`` holds two items: ``state`` (the whole ``TrainState``: params,
optimizer state with the current learning rate, step, rng) and ``meta`` (JSON: the data position
``epoch``/``step_in_epoch``, the learning-rate policy's state, the running train-loss window).
That is everything needed to continue exactly. The last ``keep`` checkpoints and the best by
validation top-1 error are kept. Restoring takes the target shardings from the abstract state it
is given, so a checkpoint written under one mesh layout restores under any other.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'

# Config fields that change the shapes or the function of the saved network: a workdir's
# checkpoints cannot continue under a config that differs in any of them.
_ARCHITECTURE_FIELDS = ('model.num_classes', 'model.use_lrn', 'model.lrn_after_pool',
                        'model.lrn_size', 'data.crop_size')


class ConfigMismatchError(ValueError):
  """The workdir holds a run of a different, incompatible configuration."""


def _get(config: dict, dotted: str):
  value = config
  for key in dotted.split('.'):
    if not isinstance(value, dict) or key not in value:
      return None
    value = value[key]
  return value


def check_and_save_config(config: ml_collections.ConfigDict, workdir: str,
                          num_classes: int, write: bool = True) -> None:
  """Saves the config in the workdir, refusing one incompatible with the workdir's checkpoints.

  ``num_classes`` is the resolved class count (the config may say 0 = from the dataset).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  current.setdefault('model', {})['num_classes'] = int(num_classes)
  if os.path.exists(path) and has_checkpoints(workdir):
    with open(path, encoding='utf-8') as f:
      try:
        saved = json.load(f)
      except json.JSONDecodeError:
        saved = None
    if saved is not None:
      differences = [f'{field} is {_get(saved, field)!r} there but {_get(current, field)!r} now'
                     for field in _ARCHITECTURE_FIELDS
                     if _get(saved, field) != _get(current, field)]
      if differences:
        raise ConfigMismatchError(
            f'The workdir {workdir} holds checkpoints of a different network ('
            + '; '.join(differences) + '); use another --workdir or the same config.')
  if write:
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(current, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def has_checkpoints(workdir: str) -> bool:
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


class Checkpoints:
  """The run's ``orbax.checkpoint.CheckpointManager``: keep the last ``keep`` and the best."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        # Orbax keeps the largest values: rank by minus the validation error.
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: -m['val_top1_error'], n=1,
                                      keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        # best_fn also makes Orbax write each step's metrics to disk, so "best" survives restarts.
        best_fn=lambda m: m['val_top1_error'], best_mode='min',
        preservation_policy=policy, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the lowest validation top-1 error (None without evaluations)."""
    best, best_error = None, None
    for step in self.all_steps():
      metrics = self.manager.metrics(step)
      if metrics and 'val_top1_error' in metrics:
        if best_error is None or metrics['val_top1_error'] < best_error:
          best, best_error = step, metrics['val_top1_error']
    return best

  def save(self, step: int, state: Any, meta: dict, val_top1_error: float | None = None) -> None:
    """Saves ``state`` and ``meta`` at ``step`` (every process must call this)."""
    metrics = None if val_top1_error is None else {'val_top1_error': float(val_top1_error)}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """(state, meta) of ``step``; arrays land with ``abstract_state``'s shardings."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def restore_latest_intact(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """The newest checkpoint that restores; damaged newer ones are reported and skipped."""
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        # A write cut short or damaged files: fall back to an older checkpoint.
        logging.warning('Checkpoint %d in %s cannot be restored (%s: %s); falling back to an '
                        'older one.', step, self.directory, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else '')
        print(f'warning: checkpoint {step} is damaged or incomplete ({type(e).__name__}); '
              'falling back to an older one.', flush=True)
        continue
      return step, state, meta
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of ``state`` carrying ``shardings`` (the restore target)."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
