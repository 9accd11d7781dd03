"""The training and evaluation loops: config + workdir -> checkpoints, metrics, plots.

Data flows one way: the input pipeline yields host batches, ``layout`` places them on the mesh,
the jitted ``train_step`` (a ``shard_map`` over the mesh) returns the new state and metrics,
``report`` writes them and Orbax saves the state. Only process 0 writes logs and plots; every
process takes part in checkpoint saves and restores. Where a run starts (its checkpoints'
network, resume or init) is ``resume.py``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import config_checks
from alexnet_jax import device_feed
from alexnet_jax import layout as layout_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import report
from alexnet_jax import resume
from alexnet_jax import run_info
from alexnet_jax import steps as steps_lib
from alexnet_jax import stopping


class TrainingError(RuntimeError):
  """Training cannot go on (a diverged loss); the message says what to do."""


# One checkpoint is about the size of the train state; keep this much more free for the rest.
_FREE_SPACE_MARGIN_BYTES = 64 << 20


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> model_lib.AlexNet:
  """The AlexNet a config describes: ``config.model.preset`` with the config's other model
  fields applied on top where they differ from the paper's."""
  m = config.model
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
  dtype = resolve_compute_dtype(m.dtype)
  if dtype not in dtypes:
    raise ValueError(f"config.model.dtype must be 'auto' or one of {sorted(dtypes)}, not "
                     f'{m.dtype!r}.')
  if m.init_scheme not in model_lib.INITS:
    raise ValueError(f'config.model.init_scheme must be one of {sorted(model_lib.INITS)}, not '
                     f'{m.init_scheme!r}.')
  name = m.preset or 'paper'
  if name not in model_lib.PRESETS:
    raise ValueError(f'config.model.preset must be one of {", ".join(model_lib.PRESETS)} (or '
                     f"'' for the paper's, or init_from's file's), not {name!r}.")
  # The config's model fields hold the paper's values; those set to anything else apply on top
  # of the preset (so --config.model.preset=bvlc alone gives bvlc's network).
  overrides = {k: v for k, v in model_lib.changed_from_paper(m.to_dict()).items()
               if k not in ('num_classes', 'dtype')}
  return model_lib.preset(name, num_classes=num_classes,
                          dtype=None if dtype == 'float32' else dtypes[dtype], **overrides)


def resolve_compute_dtype(dtype: str) -> str:
  """'auto': bfloat16 on GPU and TPU (their matrix units' fast type; parameters stay float32),
  float32 on CPU (no faster there, and the CPU runs' numbers stay as they were)."""
  if dtype != 'auto':
    return dtype
  return 'bfloat16' if jax.default_backend() in ('gpu', 'tpu') else 'float32'


def resolve_num_classes(config: ml_collections.ConfigDict, info) -> int:
  """The config's class count, checked against the dataset's (0 = take the dataset's)."""
  wanted = int(config.model.num_classes)
  if wanted == 0:
    return info.num_classes
  if wanted != info.num_classes:
    raise ValueError(f'config.model.num_classes is {wanted} but the dataset has '
                     f'{info.num_classes} classes; set --config.model.num_classes='
                     f'{info.num_classes} (or 0 to take it from the dataset).')
  return wanted


def prepare_workdir(workdir: str) -> str:
  """Creates the workdir, refusing a path that is a file or cannot be written, before training."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f'--workdir {workdir} is a file, not a directory; pass a directory '
                             '(it is created if missing).')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{os.getpid()}')
    with open(probe, 'w', encoding='utf-8') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f'--workdir {workdir} cannot be written ({e.strerror}); choose a '
                          'writable directory with free space.') from e
  return workdir


@dataclasses.dataclass
class Setup:
  """Everything built from a config before the first step."""
  config: ml_collections.ConfigDict
  info: Any
  model: model_lib.AlexNet
  tx: Any
  mesh: Any
  layout: layout_lib.Layout
  steps: layout_lib.ShardedSteps
  abstract_state: steps_lib.TrainState
  # rng -> a fresh train state with the steps' shardings; jitted once here, so that every
  # fresh start of this setup (a run, a start over, a test's second run) compiles it once.
  init_state: Callable[[jax.Array], steps_lib.TrainState]


def check_batch_split_over_processes(mesh, layout: layout_lib.Layout,
                                     global_batch_size: int) -> None:
  """Refuses a mesh on which processes would hold the same rows of the batch.

  Each process feeds its own 1/process_count of every batch (the input pipeline's per-process
  splits), so the batch axes must split the batch over the processes. A model axis spanning
  processes (towers with one device per process) gives them the same rows: each would take its
  own part for the whole batch, and the towers would silently see different images.
  """
  n = jax.process_count()
  if n == 1:
    return
  sharding = jax.sharding.NamedSharding(mesh, layout.batch_spec)
  rows = {}  # process -> (first row, end row) of the rows its devices hold
  for device, index in sharding.devices_indices_map((global_batch_size,)).items():
    start, stop, _ = index[0].indices(global_batch_size)
    lo, hi = rows.get(device.process_index, (start, stop))
    rows[device.process_index] = (min(lo, start), max(hi, stop))
  blocks = sorted(rows.values())
  if blocks != [(p * global_batch_size // n, (p + 1) * global_batch_size // n)
                for p in range(n)]:
    raise layout_lib.LayoutError(
        f'The {layout.name} layout on mesh {dict(mesh.shape)} does not split the batch over the '
        f'{n} processes (the model axis spans processes), but each process reads its own part '
        'of it; give every process at least mesh.model devices, or use the one_weird_trick '
        'layout.')


def setup(config: ml_collections.ConfigDict) -> Setup:
  """Dataset info, model, optimizer, mesh and the sharded steps for ``config``.

  The checks that need neither TensorFlow nor the dataset (mesh, batch sizes, model and
  optimizer options) come first, so a typo fails in seconds.
  """
  config_checks.check_config(config)
  mesh = layout_lib.make_mesh(config.mesh.data, config.mesh.model)
  layout = layout_lib.get_layout(config.mesh.layout)
  for field in ('batch_size', 'eval.batch_size'):
    try:
      layout_lib.check_batch(config_checks.get_field(config, field), mesh, layout)
    except layout_lib.LayoutError as e:
      raise layout_lib.LayoutError(f'config.{field}: {e}') from None
  if config.batch_size % jax.process_count():
    raise ValueError(f'The batch size {config.batch_size} does not divide over '
                     f'{jax.process_count()} processes; choose a multiple of it.')
  check_batch_split_over_processes(mesh, layout, config.batch_size)
  build_model(config, num_classes=1)  # refuse a bad dtype or init scheme before the dataset
  tx = optim.make_optimizer(config.optim)
  optim.make_lr_policy(config.optim)  # refuse a bad policy before anything compiles
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  info = input_pipeline.get_dataset_info(config.data)
  num_classes = resolve_num_classes(config, info)
  if num_classes < 2 and jax.process_index() == 0:
    print(f'warning: the dataset has {num_classes} class; a classifier needs at least two (with '
          'one, every prediction is right and the loss is 0 from the start).', file=sys.stderr,
          flush=True)
  model = build_model(config, num_classes)
  crop = config.data.crop_size
  image_shape = (1, crop, crop, 3)
  abstract_state = jax.eval_shape(
      lambda rng: steps_lib.create_train_state(rng, model, tx, image_shape), jax.random.PRNGKey(0))
  steps = layout_lib.make_steps(model, tx, mesh, layout, abstract_state)
  init_state = steps_lib.jit_create_train_state(model, tx, image_shape,
                                                out_shardings=steps.state_sharding)
  return Setup(config, info, model, tx, mesh, layout, steps, abstract_state, init_state)


def state_bytes(abstract_state) -> int:
  """Bytes of a train state: about the size of one checkpoint (Orbax writes it uncompressed)."""
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(abstract_state))


def check_free_space(workdir: str, checkpoint_bytes: int, keep: int) -> None:
  """Refuses a workdir whose disk cannot take one more checkpoint; warns if not ``keep`` more.

  A new checkpoint is written completely before an old one is deleted, so one checkpoint's
  size must be free at every save.
  """
  free = shutil.disk_usage(workdir).free
  gib = 1 << 30
  if free < checkpoint_bytes + _FREE_SPACE_MARGIN_BYTES:
    raise checkpoint_lib.CheckpointWriteError(
        f'The disk of --workdir {workdir} has {free / gib:.2f} GiB free but one checkpoint '
        f'takes {checkpoint_bytes / gib:.2f} GiB; free space or choose a workdir on a larger '
        'disk.')
  if jax.process_index() == 0 and free < (keep + 1) * checkpoint_bytes:
    print(f'warning: the disk of {workdir} has {free / gib:.2f} GiB free, less than the '
          f'{keep + 1} checkpoints of {checkpoint_bytes / gib:.2f} GiB this run keeps; it may '
          'fill up (checkpoint.keep sets how many are kept).', file=sys.stderr, flush=True)


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def evaluate_params(s: Setup, params, ten_crop: bool, max_batches: int = -1) -> dict[str, float]:
  """Validation loss and top-1/top-5 error (fractions) of ``params`` over the eval split."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  totals = None
  batches = input_pipeline.eval_batches(s.config.data, global_batch_size=s.config.eval.batch_size,
                                        ten_crop=ten_crop)
  if max_batches >= 0:
    batches = itertools.islice(batches, max_batches)
  for batch in device_feed.prefetch_to_device(batches, functools.partial(
      layout_lib.place_batch, steps=s.steps), s.config.data.device_prefetch):
    sums = s.steps.eval_step(params, batch)
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError('The validation split yielded no batch; check config.data.eval_split.')
  totals = jax.device_get(totals)
  count = max(float(totals['count']), 1.0)
  return {'val_loss': float(totals['loss']) / count,
          'val_top1_error': float(totals['top1_errors']) / count,
          'val_top5_error': float(totals['top5_errors']) / count,
          'val_examples': int(round(float(totals['count'])))}



def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       start_over: bool = False) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest intact checkpoint) and evaluates every epoch.

  What it does on each fault (the README's "When things go wrong"):

  * SIGTERM / SIGINT: finishes the current step, saves a checkpoint and returns (the caller
    exits 0); a second SIGINT stops at once.
  * killed outright: the next run resumes from the last complete checkpoint and, given the
    same config, continues exactly as if never interrupted (state, rng, data position,
    learning-rate policy and running loss sums are all in the checkpoint).
  * a damaged latest checkpoint: warned about, moved to ``damaged_checkpoints/``, and the run
    resumes from the newest intact one. When none is intact: ``NoIntactCheckpointError``,
    nothing moved, unless ``start_over`` (every checkpoint is moved aside, training restarts).
  * checkpoints of another network (read from the checkpoints, not config.json):
    ``ConfigMismatchError``; nothing is moved or rewritten.
  * a NaN or Inf loss (or parameters): :class:`TrainingError` naming the step and the last
    good checkpoint; nothing is saved after it.
  * a failed checkpoint write (disk full): ``checkpoint.CheckpointWriteError``; earlier
    checkpoints are untouched. Too little space for one checkpoint is refused before training.

  Returns the last evaluation's metrics (and 'step', 'stopped_by' when a signal stopped it).
  """
  workdir = prepare_workdir(workdir)
  # Installed first: a preemption while the job starts up still ends it cleanly.
  with stopping.StopRequest() as stop:
    config, imported = resume.imported_weights(config, workdir, start_over)
    s = setup(config)
    check_free_space(workdir, state_bytes(s.abstract_state), config.checkpoint.keep)
    ckpts = checkpoint_lib.Checkpoints(workdir, keep=config.checkpoint.keep,
                                       async_save=config.checkpoint.async_save)
    try:
      if start_over:
        ckpts.set_aside_all()
      result = _TrainingLoop(s, workdir, ckpts, stop, imported).run()
    except Exception:
      # Let a save already under way finish: a process that exits mid-write loses it.
      try:
        ckpts.wait()
      except Exception:  # pylint: disable=broad-except  (the first error is the one to report)
        pass
      raise
  return result


class _TrainingLoop:
  """The loop of :func:`train_and_evaluate`: resume or init, epochs, their ends, the finish."""

  def __init__(self, s: Setup, workdir: str, ckpts: checkpoint_lib.Checkpoints,
               stop: stopping.StopRequest, imported: Callable[[], dict] | None = None):
    from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
    self.s, self.config, self.workdir, self.ckpts, self.stop = s, s.config, workdir, ckpts, stop
    self.imported = imported  # config.init_from's params: the start when no checkpoint exists
    self.pipeline = input_pipeline
    self.is_main = jax.process_index() == 0
    self.policy = optim.make_lr_policy(self.config.optim)
    self.steps_per_epoch = input_pipeline.steps_per_epoch(s.info.num_train_examples,
                                                          self.config.batch_size)
    if self.steps_per_epoch < 1:
      raise ValueError(f'The training split has {s.info.num_train_examples} examples, fewer '
                       f'than one batch of {self.config.batch_size}; lower '
                       '--config.batch_size.')
    self.network = resume.architecture(s.model, self.config.data.crop_size)
    self.loop: resume.LoopState = None  # set by run()
    self.total_steps = 0
    self.writer = None
    self._tick = (time.perf_counter(), 0)  # (time, step) of the last rate measurement

  # --- starting -----------------------------------------------------------------------------
  def resume_or_init(self) -> resume.LoopState:
    """The newest intact checkpoint's loop state, or a fresh one (see :mod:`resume`)."""
    return resume.resume_or_init(self.s, self.ckpts, self.policy, self.network,
                                 self.steps_per_epoch, self.imported, verbose=self.is_main)

  def _count_total_steps(self) -> int:
    """The steps to the end of the last epoch (the step count itself may hold batches of
    another size), capped by max_steps."""
    loop, config = self.loop, self.config
    total = loop.step + (config.num_epochs - loop.epoch) * self.steps_per_epoch - loop.step_in_epoch
    if config.max_steps > 0:
      total = min(total, config.max_steps)
    return total

  def run(self) -> dict[str, Any]:
    """Resumes or starts, trains epoch by epoch to the end (or a stop), then finishes."""
    self.loop = self.resume_or_init()
    loop = self.loop
    if self.is_main:  # after the checkpoints accepted this network: a refused run writes nothing
      info = run_info.describe(self.s.model)
      if loop.saved_step is not None:
        run_info.note_another_machine(self.workdir, info)
      checkpoint_lib.save_config(self.config, self.workdir, self.s.model.num_classes, info)
    loop.state = loop.state.replace(opt_state=optim.set_learning_rate(
        loop.state.opt_state, self.policy.learning_rate(loop.policy_state)))
    self.total_steps = self._count_total_steps()
    pending = self._end_pending()
    # A resumed run drops the records written after its checkpoint (and, when that step's
    # evaluation is still to do, any record of it a failed resume wrote); a fresh one starts
    # empty.
    self.writer = report.MetricsWriter(self.workdir, enabled=self.is_main,
                                       resume_step=loop.step, drop_evals_at_resume_step=pending)
    if self.is_main:
      info = self.s.info
      print(f'Data: {info.num_train_examples} training and {info.num_eval_examples} validation '
            f'examples in {self.s.model.num_classes} classes; {self.steps_per_epoch} steps per '
            f'epoch, {self.total_steps} steps in all.', flush=True)
    if pending:
      self.end_epoch(replace=True)
    stopped_by = None
    while loop.step < self.total_steps:
      # Arrived between epochs, during evaluation or while starting up.
      stopped_by = self.stop.agreed(True) or self.run_epoch()
      if stopped_by is not None and not self._at_end_of_epoch():
        break
      # A stop on an epoch's last step still ends the epoch (evaluates, saves), as one during
      # its evaluation does: a checkpoint is never left with its epoch's end still to do.
      self.end_epoch()
      if stopped_by is not None:
        break
    if stopped_by is not None and loop.step != (loop.saved_step or 0):
      self.save()
    if loop.step >= self.total_steps:
      stopped_by = None  # the stop came after the last step: the run is complete
    return self.finish(stopped_by)

  def _at_end_of_epoch(self) -> bool:
    return (self.loop.step_in_epoch >= self.steps_per_epoch or
            self.loop.step >= self.total_steps)

  def _end_pending(self) -> bool:
    """Whether the checkpoint resumed from still has its epoch's end to do.

    Only checkpoints of earlier versions, which saved a stop on an epoch's last step before
    the end of the epoch: its evaluation, policy update and save are done now, in place.
    """
    loop = self.loop
    if loop.saved_step is None:
      return False
    return (loop.step_in_epoch >= self.steps_per_epoch or
            (loop.step >= self.total_steps and loop.last_eval.get('step') != loop.step))

  # --- one epoch ----------------------------------------------------------------------------
  def run_epoch(self) -> str | None:
    """Trains to the end of the current epoch (or the run); returns the signal that stopped it."""
    loop, config = self.loop, self.config
    lr = self.policy.learning_rate(loop.policy_state)
    progress = report.EpochProgress(loop.epoch, self.steps_per_epoch, loop.step_in_epoch,
                                    enabled=self.is_main and config.progress_bar)
    batches = self.pipeline.train_batches(config.data, global_batch_size=config.batch_size,
                                          seed=config.seed, epoch=loop.epoch,
                                          start_step=loop.step_in_epoch)
    batches = device_feed.prefetch_to_device(batches, functools.partial(
        layout_lib.place_batch, steps=self.s.steps), config.data.device_prefetch)
    self._tick = (time.perf_counter(), loop.step)
    pending = []  # device metrics not yet read: reading each step would stall the pipeline
    stopped_by = None
    for batch in batches:
      loop.state, metrics = self.s.steps.train_step(loop.state, batch)
      loop.step += 1
      loop.step_in_epoch += 1
      pending.append(metrics['loss'])
      at_log = loop.step % config.log_every_steps == 0
      at_save = loop.step % config.checkpoint.every_steps == 0
      end = loop.step_in_epoch >= self.steps_per_epoch or loop.step >= self.total_steps
      stopped_by = self.stop.agreed(at_log or at_save or end)
      if at_log or at_save or end or stopped_by or len(pending) >= 50:
        self._read_losses(pending, progress)
        pending = []
      if at_log:
        self.ckpts.check()  # a background save that failed (disk full) stops the run now
        self._log_train(lr)
      if stopped_by is not None or end:
        break
      if at_save:
        self.save()
    progress.close()
    return stopped_by

  def _read_losses(self, pending: list, progress: report.EpochProgress) -> None:
    """Reads the pending device losses, checks them and adds them to the running sums."""
    loop = self.loop
    losses = [float(x) for x in jax.device_get(pending)]
    for i, loss_value in enumerate(losses):
      if not math.isfinite(loss_value):
        raise self.diverged(f'a training loss of {loss_value}',
                            loop.step - len(losses) + i)
    loop.add_losses(losses)
    now = time.perf_counter()
    tick, tick_step = self._tick
    rate = (loop.step - tick_step) * self.config.batch_size / max(now - tick, 1e-9)
    progress.update(len(losses), loss=losses[-1], images_per_sec=rate)
    self._tick = (now, loop.step)

  def _log_train(self, lr: float) -> None:
    loop = self.loop
    if loop.loss_window[1]:
      self.writer.write_train(loop.step, loop.epoch_position(self.steps_per_epoch), lr,
                              loop.loss_window[0] / loop.loss_window[1])
      loop.loss_window = [0.0, 0]

  # --- the end of an epoch ------------------------------------------------------------------
  def end_epoch(self, replace: bool = False) -> None:
    """After an epoch (or the run's last step): evaluate when due, apply the policy, save
    (``replace``: over a checkpoint of the same step, see :meth:`_end_pending`)."""
    loop = self.loop
    lr = self.policy.learning_rate(loop.policy_state)
    if loop.step_in_epoch >= self.steps_per_epoch:
      loop.epoch, loop.step_in_epoch = loop.epoch + 1, 0
    val_error = None
    # Evaluate at the end of every `every_epochs` epochs and of the run.
    if loop.step >= self.total_steps or (loop.step_in_epoch == 0 and
                                         loop.epoch % self.config.eval.every_epochs == 0):
      val_error = self.evaluate_and_log(lr)['val_top1_error']
      loop.policy_state = self.policy.update(loop.policy_state, epoch=loop.epoch,
                                             val_top1_error=val_error)
    elif loop.step_in_epoch == 0:
      loop.policy_state = self.policy.update(loop.policy_state, epoch=loop.epoch)
    new_lr = self.policy.learning_rate(loop.policy_state)
    if new_lr != lr:
      loop.state = loop.state.replace(opt_state=optim.set_learning_rate(loop.state.opt_state,
                                                                         new_lr))
      if self.is_main:
        print(f'Learning rate {lr:.3g} -> {new_lr:.3g} at epoch {loop.epoch}.', flush=True)
    self.save(val_error, replace=replace)

  def evaluate_and_log(self, lr: float) -> dict[str, float]:
    """Evaluates the current parameters; writes the eval record and the console summary."""
    loop, config = self.loop, self.config
    results = evaluate_params(self.s, loop.state.params, config.eval.ten_crop,
                              config.eval.max_batches)
    since = loop.loss_since_eval
    train_loss = since[0] / since[1] if since[1] else None
    loop.loss_since_eval = [0.0, 0]
    at_epoch = loop.epoch_position(self.steps_per_epoch)
    loop.last_eval = {**results, 'step': loop.step, 'epoch': at_epoch}
    self.writer.write_eval(loop.step, at_epoch, lr, train_loss, results['val_top1_error'],
                           results['val_top5_error'], val_loss=results['val_loss'])
    if self.is_main:
      summary = {**results, 'lr': lr}
      if train_loss is not None:
        summary['train_loss'] = train_loss
      print(report.format_eval_summary(at_epoch, loop.step, summary), flush=True)
    return results

  # --- saving and failing -------------------------------------------------------------------
  def save(self, val_error: float | None = None, replace: bool = False) -> None:
    """Saves the loop state at its step, unless its parameters are not finite."""
    loop = self.loop
    # A finite loss so far does not make finite parameters (an overflowing update shows only
    # in the next step's loss): never let a broken state push a good one out.
    if not bool(_all_finite(loop.state.params)):
      raise self.diverged('NaN or Inf in the parameters', loop.step - 1)
    self.ckpts.save(loop.step, loop.state, loop.to_meta(self.config, self.network),
                    val_top1_error=val_error, replace=replace)
    loop.saved_step = loop.step

  def diverged(self, what: str, parent_step: int) -> TrainingError:
    """The error for a non-finite value computed from the state after ``parent_step``."""
    loop, ckpts = self.loop, self.ckpts
    ckpts.wait()
    moved = ''
    if loop.saved_step is not None and loop.saved_step == parent_step:
      # That checkpoint holds the very parameters that diverged: resuming from it would only
      # diverge again, so it must not pass for a good one.
      ckpts.set_aside([loop.saved_step], f'its parameters gave a {what}')
      moved = (f'; the checkpoint of step {loop.saved_step}, whose parameters gave it, was '
               f'moved to {ckpts.damaged_directory}')
      loop.saved_step = ckpts.latest_step()
    if loop.saved_step is not None:
      where = (f'the last good checkpoint is step {loop.saved_step} in {ckpts.directory}; run '
               'again with a lower --config.optim.learning_rate to resume from it')
    else:
      where = ('no good checkpoint remains; lower --config.optim.learning_rate and train '
               'again')
    return TrainingError(f'The training diverged: {what} at step {parent_step + 1}, and nothing '
                         f'was saved after it{moved} ({where}).')

  def finish(self, stopped_by: str | None) -> dict[str, Any]:
    """Waits for the saves, closes the files, writes the plots; the result of the run."""
    loop, ckpts = self.loop, self.ckpts
    ckpts.close()
    self.writer.close()
    if self.is_main:
      if stopped_by is not None:
        if loop.saved_step is None:
          print(f'Stopped by {stopped_by} before the first step; nothing to save.', flush=True)
        else:
          print(f'Stopped by {stopped_by}: saved a checkpoint at step {loop.step} in '
                f'{ckpts.directory}; run the same command to resume.', flush=True)
      else:
        write_plots(self.workdir, loop.state.params)
        print(f'Done: {loop.step} steps. Checkpoints in {ckpts.directory}; metrics in '
              f'{os.path.join(self.workdir, report.METRICS_FILE)}; plots in '
              f'{os.path.join(self.workdir, "plots")}.', flush=True)
    return {**loop.last_eval, 'step': loop.step, 'stopped_by': stopped_by}



def write_plots(workdir: str, params) -> None:
  """``plots/curves.png`` from metrics.jsonl and ``plots/conv1_filters.png`` from ``params``."""
  plots = os.path.join(workdir, 'plots')
  os.makedirs(plots, exist_ok=True)
  report.plot_curves(report.read_metrics(workdir), os.path.join(plots, 'curves.png'))
  kernel = np.asarray(jax.device_get(params['conv1']['kernel']))
  report.plot_conv1_filters(kernel, os.path.join(plots, 'conv1_filters.png'))


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             which: str = 'best') -> dict[str, Any]:
  """Top-1/top-5 error of the workdir's best (or latest) checkpoint: centre crop and 10-crop."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config, imported = resume.imported_weights(config, workdir)
  if not checkpoint_lib.has_checkpoints(workdir):
    if imported is not None:  # the imported weights as they are (the published accuracy)
      return _evaluate_imported(config, imported)
    raise FileNotFoundError(f'No checkpoint in {os.path.join(workdir, "checkpoints")}; train first '
                            f'with: python -m alexnet_jax.main --workdir {workdir}')
  s = setup(config)
  network = resume.architecture(s.model, config.data.crop_size)
  ckpts = checkpoint_lib.Checkpoints(workdir, keep=config.checkpoint.keep, async_save=False)
  step = ckpts.best_step() if which == 'best' else None
  label = 'best' if step is not None else 'latest'
  if step is None:
    # The newest intact one (damaged ones are reported and skipped, but left where they are).
    step, state, _ = ckpts.restore_latest_intact(resume.abstract_sharded(s), network,
                                                 set_aside=False)
  else:
    try:
      state, _ = ckpts.restore_checked(step, resume.abstract_sharded(s), network)
    except checkpoint_lib.ConfigMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'The best checkpoint (step {step}) in {ckpts.directory} is damaged ('
                       f'{checkpoint_lib.damage_reason(e)}); evaluate the newest intact one '
                       'with --checkpoint=latest.') from e
  ckpts.close()
  results = {'step': int(step), 'checkpoint': label}
  return _evaluate_crops(s, state.params, f'checkpoint step {step} ({label})', results)


def _evaluate_crops(s: Setup, params, what: str, results: dict) -> dict[str, Any]:
  """``results`` with the centre-crop and 10-crop evaluations of ``params``, each printed."""
  for name, ten_crop in (('centre_crop', False), ('ten_crop', True)):
    r = evaluate_params(s, params, ten_crop, s.config.eval.max_batches)
    results[name] = r
    if jax.process_index() == 0:
      print(f'{what}, {name.replace("_", " ")}: top-1 error '
            f'{100 * r["val_top1_error"]:.2f}%, top-5 error {100 * r["val_top5_error"]:.2f}% '
            f'on {r["val_examples"]} validation images', flush=True)
  return results


def _evaluate_imported(config: ml_collections.ConfigDict,
                       imported: Callable[[], dict]) -> dict[str, Any]:
  """Evaluates ``config.init_from``'s params unchanged, with the preset's preprocessing."""
  s = setup(config)
  imported = imported()
  expected = s.abstract_state.params
  for layer, parts in expected.items():
    for part, value in parts.items():
      if tuple(imported[layer][part].shape) != tuple(value.shape):
        raise ValueError(f'config.init_from {config.init_from}: {layer} {part} has shape '
                         f'{tuple(imported[layer][part].shape)} but the network on this dataset '
                         f'needs {tuple(value.shape)}; evaluate it on a dataset of its classes.')
  params = jax.device_put(imported, s.steps.state_sharding.params)
  results = {'step': 0, 'checkpoint': 'init_from'}
  return _evaluate_crops(s, params, f'imported weights {config.init_from}', results)
