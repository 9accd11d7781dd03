"""The training and evaluation loops: config + workdir -> checkpoints, metrics, plots.

Data flows one way: the input pipeline yields host batches, ``layout`` places them on the mesh,
the jitted ``train_step`` (a ``shard_map`` over the mesh) returns the new state and metrics,
``report`` writes them and Orbax saves the state. Only process 0 writes logs and plots; every
process takes part in checkpoint saves and restores.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import shutil
import signal
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import device_feed
from alexnet_jax import layout as layout_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import report
from alexnet_jax import train as train_lib


class TrainingError(RuntimeError):
  """Training cannot go on (a diverged loss); the message says what to do."""


# One checkpoint is about the size of the train state; keep this much more free for the rest.
_FREE_SPACE_MARGIN_BYTES = 64 << 20


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> model_lib.AlexNet:
  """The AlexNet a config describes (``config.model``)."""
  m = config.model
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
  dtype = resolve_compute_dtype(m.dtype)
  if dtype not in dtypes:
    raise ValueError(f"config.model.dtype must be 'auto' or one of {sorted(dtypes)}, not "
                     f'{m.dtype!r}.')
  if m.init_scheme not in model_lib.INITS:
    raise ValueError(f'config.model.init_scheme must be one of {sorted(model_lib.INITS)}, not '
                     f'{m.init_scheme!r}.')
  return model_lib.AlexNet(
      num_classes=num_classes, dropout_rate=m.dropout_rate, use_lrn=m.use_lrn,
      lrn_after_pool=m.lrn_after_pool, lrn_size=m.lrn_size, lrn_k=m.lrn_k,
      lrn_alpha=m.lrn_alpha, lrn_beta=m.lrn_beta, init_scheme=m.init_scheme,
      dtype=None if dtype == 'float32' else dtypes[dtype])


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
  abstract_state: train_lib.TrainState


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
  mesh = layout_lib.make_mesh(config.mesh.data, config.mesh.model)
  layout = layout_lib.get_layout(config.mesh.layout)
  layout_lib.check_batch(config.batch_size, mesh, layout)
  layout_lib.check_batch(config.eval.batch_size, mesh, layout)
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
  model = build_model(config, num_classes)
  crop = config.data.crop_size
  abstract_state = jax.eval_shape(
      lambda rng: train_lib.create_train_state(rng, model, tx, (1, crop, crop, 3)),
      jax.random.PRNGKey(0))
  steps = layout_lib.make_steps(model, tx, mesh, layout, abstract_state)
  return Setup(config, info, model, tx, mesh, layout, steps, abstract_state)


def state_bytes(abstract_state) -> int:
  """Bytes of a train state: about the size of one checkpoint (Orbax writes it uncompressed)."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
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
          'fill up (checkpoint.keep sets how many are kept).', flush=True)


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _initial_state(s: Setup) -> train_lib.TrainState:
  crop = s.config.data.crop_size
  init = jax.jit(lambda rng: train_lib.create_train_state(rng, s.model, s.tx, (1, crop, crop, 3)),
                 out_shardings=s.steps.state_sharding)
  return init(jax.random.PRNGKey(s.config.seed))


def _abstract_sharded(s: Setup):
  return jax.tree_util.tree_map(
      lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
      s.abstract_state, s.steps.state_sharding)


class _StopRequest:
  """Turns SIGTERM/SIGINT (how clusters preempt) into a request the loop honours between steps."""

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    self.signal_name = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def evaluate_params(s: Setup, params, ten_crop: bool, max_batches: int = -1) -> dict[str, float]:
  """Validation loss and top-1/top-5 error (fractions) of ``params`` over the eval split."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  totals = None
  batches = input_pipeline.eval_batches(s.config.data, global_batch_size=s.config.eval.batch_size,
                                        ten_crop=ten_crop)
  if max_batches >= 0:
    batches = itertools.islice(batches, max_batches)
  for batch in device_feed.prefetch_to_device(batches, functools.partial(
      layout_lib.place_batch, steps=s.steps), s.config.data.get('device_prefetch', 2)):
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest intact checkpoint) and evaluates every epoch.

  What it does on each fault (the README's "When things go wrong"):

  * SIGTERM / SIGINT: finishes the current step, saves a checkpoint and returns (the caller
    exits 0); a second SIGINT stops at once.
  * killed outright: the next run resumes from the last complete checkpoint and, given the
    same config, continues exactly as if never interrupted (state, rng, data position,
    learning-rate policy and running loss sums are all in the checkpoint).
  * a damaged latest checkpoint: warned about, moved to ``damaged_checkpoints/``, and the run
    resumes from the newest intact one.
  * a NaN or Inf loss (or parameters): :class:`TrainingError` naming the step and the last
    good checkpoint; nothing is saved after it.
  * a failed checkpoint write (disk full): ``checkpoint.CheckpointWriteError``; earlier
    checkpoints are untouched. Too little space for one checkpoint is refused before training.

  Returns the last evaluation's metrics (and 'step', 'stopped_by' when a signal stopped it).
  """
  workdir = prepare_workdir(workdir)
  is_main = jax.process_index() == 0
  # Installed first: a preemption while the job starts up still ends it cleanly.
  with _StopRequest() as stop:
    s = setup(config)
    from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    checkpoint_lib.check_and_save_config(config, workdir, s.model.num_classes, write=is_main)
    check_free_space(workdir, state_bytes(s.abstract_state), config.checkpoint.keep)
    ckpts = checkpoint_lib.Checkpoints(workdir, keep=config.checkpoint.keep,
                                       async_save=config.checkpoint.async_save)
    try:
      result = _train(config, workdir, s, ckpts, stop, input_pipeline)
    except Exception:
      # Let a save already under way finish: a process that exits mid-write loses it.
      try:
        ckpts.wait()
      except Exception:  # pylint: disable=broad-except  (the first error is the one to report)
        pass
      raise
  return result


def _train(config, workdir, s: Setup, ckpts: checkpoint_lib.Checkpoints, stop: '_StopRequest',
           input_pipeline) -> dict[str, Any]:
  """The loop of :func:`train_and_evaluate`, from resuming to the final plots."""
  is_main = jax.process_index() == 0
  policy = optim.make_lr_policy(config.optim)

  # Resume exactly where the last intact checkpoint left off, or start fresh.
  restored = ckpts.restore_latest_intact(_abstract_sharded(s))
  if restored is not None:
    step, state, meta = restored
    epoch, step_in_epoch = int(meta['epoch']), int(meta['step_in_epoch'])
    policy_state = optim.policy_state_to_numpy(
        {k: np.asarray(v) for k, v in meta['lr_policy'].items()})
    window = meta.get('loss_window', [0.0, 0])
    since_eval = meta.get('loss_since_eval', [0.0, 0])
    last_eval = meta.get('last_eval', {})
    if is_main:
      print(f'Resuming from checkpoint at step {step} (epoch {epoch}, step {step_in_epoch} of '
            f'the epoch) in {ckpts.directory}.', flush=True)
    policy_state = _rescale_learning_rate(policy, policy_state, meta, config, is_main)
  else:
    step, epoch, step_in_epoch = 0, 0, 0
    state = _initial_state(s)
    policy_state = policy.init(config.optim.learning_rate)
    window, since_eval, last_eval = [0.0, 0], [0.0, 0], {}
  state = state.replace(opt_state=optim.set_learning_rate(state.opt_state,
                                                          policy.learning_rate(policy_state)))
  # A resumed run drops the records written after its checkpoint; a fresh one starts empty.
  writer = report.MetricsWriter(workdir, enabled=is_main, resume_step=step)

  steps_per_epoch = input_pipeline.steps_per_epoch(s.info.num_train_examples, config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f'The training split has {s.info.num_train_examples} examples, fewer than '
                     f'one batch of {config.batch_size}; lower --config.batch_size.')
  if restored is not None and int(meta.get('batch_size', config.batch_size)) != config.batch_size:
    old_batch = int(meta['batch_size'])
    step_in_epoch = position_for_batch_size(step_in_epoch, old_batch, config.batch_size,
                                            steps_per_epoch)
    if is_main:
      print(f'The batch size is {config.batch_size}, not {old_batch} as in the checkpoint: the '
            f'epoch continues at batch {step_in_epoch} of {steps_per_epoch}.', flush=True)
  # The steps left to the end of the last epoch (the step count itself may hold batches of
  # another size), capped by max_steps.
  total_steps = step + (config.num_epochs - epoch) * steps_per_epoch - step_in_epoch
  if config.max_steps > 0:
    total_steps = min(total_steps, config.max_steps)
  if is_main:
    print(f'Data: {s.info.num_train_examples} training and {s.info.num_eval_examples} '
          f'validation examples in {s.model.num_classes} classes; {steps_per_epoch} steps per '
          f'epoch, {total_steps} steps in all.', flush=True)
  saved_step = step if restored is not None else None  # the newest checkpoint on disk

  def meta_now():
    return {'epoch': epoch, 'step_in_epoch': step_in_epoch, 'batch_size': config.batch_size,
            'lr_policy': {k: float(v) for k, v in policy_state.items()},
            'config_learning_rate': float(config.optim.learning_rate),
            'loss_window': list(window), 'loss_since_eval': list(since_eval),
            'last_eval': last_eval}

  def diverged(what: str, parent_step: int) -> TrainingError:
    """The error for a non-finite value computed from the state after ``parent_step``."""
    nonlocal saved_step
    ckpts.wait()
    moved = ''
    if saved_step is not None and saved_step == parent_step:
      # That checkpoint holds the very parameters that diverged: resuming from it would only
      # diverge again, so it must not pass for a good one.
      ckpts.set_aside([saved_step], f'its parameters gave a {what}')
      moved = (f'; the checkpoint of step {saved_step}, whose parameters gave it, was moved to '
               f'{ckpts.damaged_directory}')
      saved_step = ckpts.latest_step()
    if saved_step is not None:
      where = (f'the last good checkpoint is step {saved_step} in {ckpts.directory}; run '
               'again with a lower --config.optim.learning_rate to resume from it')
    else:
      where = ('no good checkpoint remains; lower --config.optim.learning_rate and train '
               'again')
    return TrainingError(f'The training diverged: {what} at step {parent_step + 1}, and nothing '
                         f'was saved after it{moved} ({where}).')

  def save(val_error=None):
    nonlocal saved_step
    # A finite loss so far does not make finite parameters (an overflowing update shows only
    # in the next step's loss): never let a broken state push a good one out.
    if not bool(_all_finite(state.params)):
      raise diverged('NaN or Inf in the parameters', step - 1)
    ckpts.save(step, state, meta_now(), val_top1_error=val_error)
    saved_step = step

  def check_finite(loss_value, at_step):
    if not math.isfinite(loss_value):
      raise diverged(f'a training loss of {loss_value}', at_step - 1)

  def agreed_stop(at_sync_point: bool) -> str | None:
    """The signal to stop on, agreed by every process (a preemption may reach only one).

    With several processes, they compare their requests only at steps that are sync points for
    all of them; a process that stopped alone would leave the others waiting in a collective.
    """
    if jax.process_count() == 1:
      return stop.signal_name
    if not at_sync_point:
      return None
    asked = multihost_utils.process_allgather(np.int32(stop.signal_name is not None))
    if not np.any(asked):
      return None
    return stop.signal_name or 'a signal to another process'

  stopped_by = None
  while step < total_steps:
    # Arrived between epochs, during evaluation or while starting up.
    stopped_by = agreed_stop(True)
    if stopped_by is not None:
      break
    lr = policy.learning_rate(policy_state)
    progress = report.EpochProgress(epoch, steps_per_epoch, step_in_epoch,
                                    enabled=is_main and config.progress_bar)
    batches = input_pipeline.train_batches(config.data, global_batch_size=config.batch_size,
                                           seed=config.seed, epoch=epoch,
                                           start_step=step_in_epoch)
    batches = device_feed.prefetch_to_device(batches, functools.partial(
        layout_lib.place_batch, steps=s.steps), config.data.get('device_prefetch', 2))
    tick, tick_step = time.perf_counter(), step
    pending = []  # device metrics not yet read: reading each step would stall the pipeline
    for batch in batches:
      state, metrics = s.steps.train_step(state, batch)
      step += 1
      step_in_epoch += 1
      pending.append(metrics['loss'])
      at_log = step % config.log_every_steps == 0
      at_save = step % config.checkpoint.every_steps == 0
      end = step_in_epoch >= steps_per_epoch or step >= total_steps
      stopped_by = agreed_stop(at_log or at_save or end)
      if at_log or at_save or end or stopped_by or len(pending) >= 50:
        losses = [float(x) for x in jax.device_get(pending)]
        pending = []
        for i, loss_value in enumerate(losses):
          check_finite(loss_value, step - len(losses) + i + 1)
        # Running sums (in the checkpoint too, so a resumed run logs the same numbers).
        window = [window[0] + sum(losses), window[1] + len(losses)]
        since_eval = [since_eval[0] + sum(losses), since_eval[1] + len(losses)]
        now = time.perf_counter()
        rate = (step - tick_step) * config.batch_size / max(now - tick, 1e-9)
        progress.update(len(losses), loss=losses[-1], images_per_sec=rate)
        tick, tick_step = now, step
      if at_log:
        ckpts.check()  # a background save that failed (disk full) stops the run now
      if at_log and window[1]:
        writer.write_train(step, epoch + step_in_epoch / steps_per_epoch, lr,
                           window[0] / window[1])
        window = [0.0, 0]
      if stopped_by is not None:
        break
      if at_save and not end:
        save()
      if end:
        break
    progress.close()
    if stopped_by is not None:
      break
    if step_in_epoch >= steps_per_epoch:
      epoch, step_in_epoch = epoch + 1, 0
    # Evaluate at the end of every `every_epochs` epochs and of the run.
    val_error = None
    if step >= total_steps or (step_in_epoch == 0 and epoch % config.eval.every_epochs == 0):
      results = evaluate_params(s, state.params, config.eval.ten_crop, config.eval.max_batches)
      val_error = results['val_top1_error']
      train_loss = since_eval[0] / since_eval[1] if since_eval[1] else None
      since_eval = [0.0, 0]
      at_epoch = epoch + step_in_epoch / steps_per_epoch
      last_eval = {**results, 'step': step, 'epoch': at_epoch}
      writer.write_eval(step, at_epoch, lr, train_loss, results['val_top1_error'],
                        results['val_top5_error'], val_loss=results['val_loss'])
      if is_main:
        summary = {**results, 'lr': lr}
        if train_loss is not None:
          summary['train_loss'] = train_loss
        print(report.format_eval_summary(at_epoch, step, summary), flush=True)
      policy_state = policy.update(policy_state, epoch=epoch, val_top1_error=val_error)
    elif step_in_epoch == 0:
      policy_state = policy.update(policy_state, epoch=epoch)
    new_lr = policy.learning_rate(policy_state)
    if new_lr != lr:
      state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, new_lr))
      if is_main:
        print(f'Learning rate {lr:.3g} -> {new_lr:.3g} at epoch {epoch}.', flush=True)
    save(val_error)

  if stopped_by is not None and step != (saved_step or 0):
    save()
  ckpts.close()
  writer.close()
  if is_main:
    if stopped_by is not None:
      if saved_step is None:
        print(f'Stopped by {stopped_by} before the first step; nothing to save.', flush=True)
      else:
        print(f'Stopped by {stopped_by}: saved a checkpoint at step {step} in '
              f'{ckpts.directory}; run the same command to resume.', flush=True)
    else:
      write_plots(workdir, state.params)
      print(f'Done: {step} steps. Checkpoints in {ckpts.directory}; metrics in '
            f'{os.path.join(workdir, report.METRICS_FILE)}; plots in '
            f'{os.path.join(workdir, "plots")}.', flush=True)
  return {**last_eval, 'step': step, 'stopped_by': stopped_by}


def position_for_batch_size(step_in_epoch: int, old_batch: int, new_batch: int,
                            steps_per_epoch: int) -> int:
  """Where a resumed epoch continues when the batch size changed.

  At the first new batch that starts at or after the examples already seen (an epoch's example
  order does not depend on the batch size), but never past the epoch's last batch, so that the
  epoch still ends, evaluates and saves.
  """
  seen = step_in_epoch * old_batch
  return min(-(-seen // new_batch), steps_per_epoch - 1)


def _rescale_learning_rate(policy, policy_state, meta, config, verbose: bool):
  """A resumed run whose config changes the learning rate scales the checkpoint's schedule.

  The checkpoint's policy state holds the current rate (after any decays); a new
  ``config.optim.learning_rate`` multiplies it by new/old, so lowering the rate after a
  divergence, or by hand as the paper did, takes effect from the resumed step on.
  """
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
  if not checkpoint_lib.has_checkpoints(workdir):
    raise FileNotFoundError(f'No checkpoint in {os.path.join(workdir, "checkpoints")}; train first '
                            f'with: python -m alexnet_jax.main --workdir {workdir}')
  s = setup(config)
  checkpoint_lib.check_and_save_config(config, workdir, s.model.num_classes, write=False)
  ckpts = checkpoint_lib.Checkpoints(workdir, keep=config.checkpoint.keep, async_save=False)
  step = ckpts.best_step() if which == 'best' else None
  label = 'best' if step is not None else 'latest'
  if step is None:
    # The newest intact one (damaged ones are reported and skipped, but left where they are).
    restored = ckpts.restore_latest_intact(_abstract_sharded(s), set_aside=False)
    if restored is None:
      raise FileNotFoundError(f'No checkpoint in {ckpts.directory} restores; train again with: '
                              f'python -m alexnet_jax.main --workdir {workdir}')
    step, state, _ = restored
  else:
    try:
      state, _ = ckpts.restore(step, _abstract_sharded(s))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'The best checkpoint (step {step}) in {ckpts.directory} is damaged ('
                       f'{type(e).__name__}); evaluate the newest intact one with '
                       '--checkpoint=latest.') from e
  ckpts.close()
  results = {'step': int(step), 'checkpoint': label}
  for name, ten_crop in (('centre_crop', False), ('ten_crop', True)):
    r = evaluate_params(s, state.params, ten_crop, config.eval.max_batches)
    results[name] = r
    if jax.process_index() == 0:
      print(f'checkpoint step {step} ({label}), {name.replace("_", " ")}: top-1 error '
            f'{100 * r["val_top1_error"]:.2f}%, top-5 error {100 * r["val_top5_error"]:.2f}% '
            f'on {r["val_examples"]} validation images', flush=True)
  return results
