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
import os
import re
import shutil
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
DAMAGED_DIR = 'damaged_checkpoints'  # damaged checkpoints are moved here, not deleted
_TMP_MARK = '.orbax-checkpoint-tmp'

# Config fields that change the shapes or the function of the saved network: a workdir's
# checkpoints cannot continue under a config that differs in any of them.
_ARCHITECTURE_FIELDS = ('model.num_classes', 'model.use_lrn', 'model.lrn_after_pool',
                        'model.lrn_size', 'data.crop_size')


class ConfigMismatchError(ValueError):
  """The workdir holds a run of a different, incompatible configuration."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, unwritable); the earlier ones are intact."""


def _failure_reason(error: BaseException) -> str:
  """The OS's words for a failed write (tensorstore reports errno as os_error_code='N')."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  match = re.search(r"os_error_code='?(\d+)", str(error))
  if match:
    return os.strerror(int(match.group(1)))
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:200]}' if lines else type(error).__name__


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
    self._in_flight = None  # the step of a save still being written in the background

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
    """Saves ``state`` and ``meta`` at ``step`` (every process must call this).

    With async saving this returns once the arrays are copied off the devices; a failure of the
    background write surfaces at the next :meth:`save`, :meth:`wait` or :meth:`close`. Either
    way a failed write raises :class:`CheckpointWriteError`; Orbax writes into a temporary
    directory and renames it when complete, so earlier checkpoints are never touched.
    """
    self.wait()  # a failed previous write must be reported as that step's, not this one's
    metrics = None if val_top1_error is None else {'val_top1_error': float(val_top1_error)}
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
          metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except  (any failure: the write failed)
      raise self._write_error(step, e) from e
    self._in_flight = step

  def _write_error(self, step: int | None, error: BaseException) -> CheckpointWriteError:
    """A clear error for a failed write of ``step``, after removing its partial directory."""
    if step is not None and jax.process_index() == 0 and os.path.isdir(self.directory):
      # The half-written temporary directory only takes space (it never restores).
      for name in os.listdir(self.directory):
        if name.startswith(f'{step}{_TMP_MARK}'):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    try:
      self.manager.reload()
      latest = self.latest_step()
    except Exception:  # pylint: disable=broad-except  (the message matters more than the step)
      latest = None
    intact = (f'the checkpoints already there are intact (the latest is step {latest})'
              if latest is not None else 'no earlier checkpoint exists')
    which = f'the checkpoint of step {step}' if step is not None else 'a checkpoint'
    return CheckpointWriteError(
        f'Could not write {which} in {self.directory} '
        f'({_failure_reason(error)}); {intact}. Free disk space or move the workdir to a disk '
        'with room, then run the same command to resume.')

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """(state, meta) of ``step``; arrays land with ``abstract_state``'s shardings."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def restore_latest_intact(self, abstract_state: Any,
                            set_aside: bool = True) -> tuple[int, Any, dict] | None:
    """The newest checkpoint that restores; damaged newer ones are reported and skipped.

    With ``set_aside`` (training) the damaged ones are moved to ``<workdir>/damaged_checkpoints``
    so that the resumed run can save those steps again (Orbax refuses an existing step).
    """
    damaged = []
    found = None
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        # A write cut short or damaged files: fall back to an older checkpoint.
        damaged.append(step)
        print(f'warning: checkpoint {step} in {self.directory} is damaged or incomplete '
              f'({_failure_reason(e)}); falling back to an older one.', flush=True)
        continue
      found = (step, state, meta)
      break
    if damaged and set_aside:
      self.set_aside(damaged, 'damaged')
    return found

  @property
  def damaged_directory(self) -> str:
    return os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)

  def set_aside(self, steps: list[int], why: str) -> None:
    """Moves the checkpoints of ``steps`` to ``damaged_checkpoints/`` (process 0), then reloads.

    Every process must call this. Nothing is deleted: the user may still want to look.
    """
    target = self.damaged_directory
    if jax.process_index() == 0:
      os.makedirs(target, exist_ok=True)
      for step in steps:
        source = os.path.join(self.directory, str(step))
        if os.path.isdir(source):
          destination = os.path.join(target, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
          shutil.move(source, destination)
          print(f'warning: moved checkpoint {step} ({why}) to {destination}.', flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('alexnet_jax_set_aside_damaged_checkpoints')
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until a background save is written; raises :class:`CheckpointWriteError` if not."""
    step, self._in_flight = self._in_flight, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(step, e) from e

  def check(self) -> None:
    """Raises :class:`CheckpointWriteError` now if a background save has failed (no waiting).

    Without it a failed write would surface only at the next save, thousands of steps later.
    """
    if self._in_flight is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def close(self) -> None:
    self.wait()
    self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of ``state`` carrying ``shardings`` (the restore target)."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
