"""Orbax checkpoints of a run, and the run's saved config.

``<workdir>/checkpoints/<step>/`` holds two items: ``state`` (the whole ``TrainState``: params,
optimizer state with the current learning rate, step, rng) and ``meta`` (JSON: the data position
``epoch``/``step_in_epoch``, the learning-rate policy's state, the running train-loss window).
That is everything needed to continue exactly. The last ``keep`` checkpoints and the best by
validation top-1 error are kept. Restoring takes the target shardings from the abstract state it
is given, so a checkpoint written under one mesh layout restores under any other.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
DAMAGED_DIR = 'damaged_checkpoints'  # damaged checkpoints are moved here, not deleted
_TMP_MARK = '.orbax-checkpoint-tmp'
_META_ITEM = 'meta'  # the checkpoint's item holding the loop's JSON meta

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


class NoIntactCheckpointError(ValueError):
  """Checkpoints exist but none restores; nothing was moved."""


def _chain(error: BaseException) -> list[BaseException]:
  """``error`` and the errors it was raised from (Orbax wraps tensorstore's error, which holds
  the status words, in a generic ``Exception``)."""
  chain = []
  while error is not None and error not in chain and len(chain) < 16:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def damage_reason(error: BaseException) -> str:
  """Why a checkpoint did not restore, in words (tensorstore's text holds specs and paths).

  Orbax and tensorstore raise ValueError or RuntimeError for every kind of damage, so the
  status words in their text (tensorstore's ``OUT_OF_RANGE``, ``NOT_FOUND``, ...), in the error
  or in those it was raised from, are the only signal of which kind it was.
  """
  chain = _chain(error)
  text = '\n'.join(str(e) for e in chain)
  if (any(isinstance(e, FileNotFoundError) for e in chain) or 'NOT_FOUND' in text
      or 'No such file' in text):
    return 'a file of it is missing'
  if 'OUT_OF_RANGE' in text or 'byte range' in text.lower() or 'Truncated' in text:
    return 'a file of it is cut short'
  if any(isinstance(e, json.JSONDecodeError) for e in chain) or 'JSON' in text:
    return 'its metadata is not valid JSON'
  if 'DATA_LOSS' in text or 'checksum' in text.lower() or 'decompress' in text.lower():
    return 'a file of it is corrupt'
  # The first line up to the first object repr or spec (``<bound method ...>``, ``[spec=...]``).
  text = str(error)
  first = re.split(r'[<\[]', text.strip().splitlines()[0] if text.strip() else '')[0]
  first = ' '.join(first.split()).strip(' :;,')[:120]
  return f'{type(error).__name__}: {first}' if first else type(error).__name__


def _param_shapes(params) -> dict[str, tuple]:
  if not isinstance(params, dict):
    return {}
  return {jax.tree_util.keystr(path): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _left_by_abandoned_reads(unraisable) -> bool:
  """Whether a report comes from the reads a failed restore abandoned (see below)."""
  error, culprit = unraisable.exc_value, unraisable.object
  if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
    return True
  code = getattr(culprit, 'cr_code', None)
  return inspect.iscoroutine(culprit) and os.sep + 'orbax' + os.sep in code.co_filename


class _AbandonedTaskLogs(logging.Filter):
  """asyncio's log lines about the abandoned tasks of a failed restore."""

  def filter(self, record):
    return not str(record.msg).startswith(('Task exception was never retrieved',
                                           'Task was destroyed but it is pending'))


def _drop_reports_of_abandoned_reads() -> None:
  """Installs, once per process, the filters of :func:`_quiet_failed_reads`."""
  if getattr(sys.unraisablehook, 'drops_abandoned_reads', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _left_by_abandoned_reads(unraisable):
      previous(unraisable)

  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook
  logging.getLogger('asyncio').addFilter(_AbandonedTaskLogs())


@contextlib.contextmanager
def _quiet_failed_reads():
  """Keeps the reports that a failed restore's abandoned reads leave off the user's screen.

  When one tensorstore read fails, Orbax closes its event loop with the other reads still in
  flight. Those reads then finish on tensorstore's threads and find the loop closed
  ("RuntimeError: Event loop is closed", through sys.unraisablehook), their coroutines are
  reported as they are collected ("Exception ignored in: <coroutine ...>") and their tasks
  are logged by asyncio: a traceback each, hundreds of lines for one damaged checkpoint that
  the caller reports in one line. They come whenever the abandoned objects go, which may be
  long after the restore (at exit, when the error that holds them is dropped), so the filters
  that drop them, and only them, stay for the rest of the process. After a failure the
  error's frames, which hold the abandoned reads, are cleared and collected here (the error
  keeps its messages and its traceback's lines).
  """
  _drop_reports_of_abandoned_reads()
  try:
    yield
  except BaseException as error:
    for link in _chain(error):
      traceback.clear_frames(link.__traceback__)
    gc.collect()
    raise


def save_config(config: ml_collections.ConfigDict, workdir: str, num_classes: int,
                run_info: dict | None = None) -> None:
  """Writes the run's config (and ``run_info``: machine, versions, resolved implementations)
  to ``<workdir>/config.json``.

  A record for the user, not the workdir's identity: the checkpoints themselves say which
  network they hold (see :meth:`Checkpoints.restore_latest_intact`), so a missing or damaged
  config.json is simply written anew. ``num_classes`` is the resolved class count (the config
  may say 0 = from the dataset).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  current.setdefault('model', {})['num_classes'] = int(num_classes)
  if run_info is not None:
    current['run'] = run_info
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(current, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def saved_steps(workdir: str) -> list[int]:
  """The steps of the workdir's checkpoint directories (without opening a manager, which would
  clean up the temporary directory of a save still being written by another process)."""
  return sorted(ocp.utils.checkpoint_steps(os.path.join(workdir, CHECKPOINT_DIR)))


def has_checkpoints(workdir: str) -> bool:
  return bool(saved_steps(workdir))


def step_directory(workdir: str, step: int) -> str:
  """The directory of checkpoint ``step`` in ``workdir`` (``<workdir>/checkpoints/<step>``)."""
  return os.path.join(workdir, CHECKPOINT_DIR, str(step))


def read_meta(step_dir: str) -> dict:
  """The JSON meta of one checkpoint directory (``<workdir>/checkpoints/<step>``), read alone
  (without a manager, which would clean up a save another process is still writing)."""
  return _read_meta(step_dir, f'the meta of {step_dir}')


def _read_meta(step_dir: str, where: str) -> dict:
  """The meta item of ``step_dir``, refused (``where`` names it) unless a JSON object.

  The one reader of a checkpoint's meta, for :func:`read_meta` and for
  :meth:`Checkpoints.restore_checked` alike: a standalone Checkpointer with the manager's own
  meta handler reads the same files the manager would, and opens no manager (whose start
  removes the temporary directory of a save another process is still writing).
  """
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
    meta = checkpointer.restore(os.path.join(step_dir, _META_ITEM))
  if not isinstance(meta, dict):
    raise ValueError(f'{where} is a {type(meta).__name__}, not a JSON object')
  return meta


def recorded_network(workdir: str) -> dict | None:
  """The network the workdir's checkpoints hold, as they record it (``meta['architecture']``
  of the newest checkpoint whose meta reads; every checkpoint of a workdir holds the same
  network, since a restore refuses another). None without such a record: no checkpoint, or
  only checkpoints of versions that did not record it."""
  for step in reversed(saved_steps(workdir)):
    try:
      meta = read_meta(step_directory(workdir, step))
    except Exception:  # pylint: disable=broad-except  (damaged: the restore reports it)
      continue
    if isinstance(meta.get('architecture'), dict):
      return meta['architecture']
  return None


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
    # Handlers named up front: the saved state's shapes can then be read without restoring it.
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'meta'),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})
    self._in_flight = None  # the step of a save still being written in the background

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the lowest validation top-1 error (None without evaluations).

    Not ``CheckpointManager.best_step``: on equal errors Orbax's picks the latest step, and the
    earliest is the one to keep (fewer steps to the same error; equal errors are common on a
    small validation split).
    """
    best, best_error = None, None
    for step in self.all_steps():
      metrics = self.manager.metrics(step)
      if metrics and 'val_top1_error' in metrics:
        if best_error is None or metrics['val_top1_error'] < best_error:
          best, best_error = step, metrics['val_top1_error']
    return best

  def save(self, step: int, state: Any, meta: dict, val_top1_error: float | None = None,
           replace: bool = False) -> None:
    """Saves ``state`` and ``meta`` at ``step`` (every process must call this).

    With async saving this returns once the arrays are copied off the devices; a failure of the
    background write surfaces at the next :meth:`save`, :meth:`wait` or :meth:`close`. Either
    way a failed write raises :class:`CheckpointWriteError`; Orbax writes into a temporary
    directory and renames it when complete, so earlier checkpoints are never touched.
    ``replace`` first deletes a checkpoint of the same step.
    """
    self.wait()  # a failed previous write must be reported as that step's, not this one's
    if replace and step in self.all_steps():
      # Orbax refuses an existing step. Its state is the same; the meta and metrics are new.
      self.manager.delete(step)
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
      self._remove_partial(step)
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

  def _remove_partial(self, step: int, quiet_s: float = 0.1, timeout_s: float = 5.0) -> None:
    """Removes the half-written temporary directory of ``step`` (it never restores).

    The first failed item ends Orbax's wait while its other writer threads may still add files
    for a moment, and a file added during the removal leaves the directory behind (seen once in
    CI): removed until it has stayed gone for ``quiet_s``, for at most ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    gone_since = None
    while time.monotonic() < deadline:
      partial = [name for name in os.listdir(self.directory)
                 if name.startswith(f'{step}{_TMP_MARK}')]
      for name in partial:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      if partial:
        gone_since = None
      elif gone_since is None:
        gone_since = time.monotonic()
      elif time.monotonic() - gone_since >= quiet_s:
        return
      time.sleep(0.02)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """(state, meta) of ``step``; arrays land with ``abstract_state``'s shardings."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def restore_latest_intact(self, abstract_state: Any, identity: dict | None = None,
                            set_aside: bool = True) -> tuple[int, Any, dict] | None:
    """The newest checkpoint that restores; damaged newer ones are reported and skipped.

    Before restoring, each checkpoint's own record of its network (``meta['architecture']``,
    compared with ``identity``) and its saved parameter shapes (compared with
    ``abstract_state``'s) must match: a checkpoint of another network raises
    :class:`ConfigMismatchError` and nothing is moved, whatever the workdir's config.json says.
    With ``set_aside`` (training) the damaged ones are moved to ``<workdir>/damaged_checkpoints``
    so that the resumed run can save those steps again (Orbax refuses an existing step). When
    checkpoints exist but none restores, :class:`NoIntactCheckpointError` is raised and
    nothing is moved.
    """
    damaged = []
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore_checked(step, abstract_state, identity)
      except ConfigMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        # A write cut short or damaged files: fall back to an older checkpoint.
        damaged.append(step)
        print(f'warning: checkpoint {step} in {self.directory} is damaged or incomplete '
              f'({damage_reason(e)}); trying an older one.', file=sys.stderr, flush=True)
        continue
      if damaged and set_aside:
        self.set_aside(damaged, 'damaged')
      return step, state, meta
    if damaged:
      raise NoIntactCheckpointError(
          f'No intact checkpoint remains in {self.directory}: all {len(damaged)} are damaged '
          '(nothing was moved or deleted); to start over, move that directory away or pass '
          '--start_over (which moves them to damaged_checkpoints/ and trains from step 0).')
    return None

  def restore_checked(self, step: int, abstract_state: Any,
                      identity: dict | None) -> tuple[Any, dict]:
    """:meth:`restore` after checking that ``step`` holds the network asked for."""
    with _quiet_failed_reads():
      meta = _read_meta(os.path.join(self.directory, str(step)), 'its meta')
      self._check_identity(step, meta, identity, abstract_state)
      return self.restore(step, abstract_state)

  def _check_identity(self, step: int, meta: dict, identity: dict | None,
                      abstract_state: Any) -> None:
    """Raises :class:`ConfigMismatchError` if ``step`` holds another network than asked for."""
    saved = meta.get('architecture')
    if identity is not None and isinstance(saved, dict):
      differences = [f'{field} is {saved.get(field)!r} there but {identity.get(field)!r} now'
                     for field in sorted(set(saved) | set(identity))
                     if saved.get(field) != identity.get(field)]
      if differences:
        raise ConfigMismatchError(self._mismatch(differences))
    wanted = _param_shapes(getattr(abstract_state, 'params', None))
    if wanted:
      tree = self.manager.item_metadata(step)['state']
      tree = getattr(tree, 'tree', tree)
      found = _param_shapes(tree.get('params') if isinstance(tree, dict) else None)
      differences = [f'{name} has shape {found.get(name)} there but {shape} now'
                     for name, shape in wanted.items() if found.get(name) != shape]
      differences += [f'{name} is there but not in the network now'
                      for name in found if name not in wanted]
      if found and differences:
        raise ConfigMismatchError(self._mismatch(differences[:3]))

  def _mismatch(self, differences: list[str]) -> str:
    workdir = os.path.dirname(self.directory)
    return (f'The workdir {workdir} holds checkpoints of a different network ('
            + '; '.join(differences) + '); use another --workdir or the same config.')

  def set_aside_all(self) -> None:
    """Moves every checkpoint to ``damaged_checkpoints/`` (a start over asked for by the user)."""
    steps = self.all_steps()
    if steps:
      self.set_aside(steps, 'start over')

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
          print(f'warning: moved checkpoint {step} ({why}) to {destination}.',
                file=sys.stderr, flush=True)
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
