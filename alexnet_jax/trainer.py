"""The training and evaluation loops: config + workdir -> checkpoints, metrics, plots.

Data flows one way: the input pipeline yields host batches, ``layout`` places them on the mesh,
the jitted ``train_step`` (a ``shard_map`` over the mesh) returns the new state and metrics,
``report`` writes them and Orbax saves the state. Only process 0 writes logs and plots; every
process takes part in checkpoint saves and restores.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import layout as layout_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import report
from alexnet_jax import train as train_lib


class TrainingError(RuntimeError):
  """Training cannot go on (a diverged loss); the message says what to do."""


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> model_lib.AlexNet:
  """The AlexNet a config describes (``config.model``)."""
  m = config.model
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
  if m.dtype not in dtypes:
    raise ValueError(f'config.model.dtype must be one of {sorted(dtypes)}, not {m.dtype!r}.')
  if m.init_scheme not in model_lib.INITS:
    raise ValueError(f'config.model.init_scheme must be one of {sorted(model_lib.INITS)}, not '
                     f'{m.init_scheme!r}.')
  return model_lib.AlexNet(
      num_classes=num_classes, dropout_rate=m.dropout_rate, use_lrn=m.use_lrn,
      lrn_after_pool=m.lrn_after_pool, lrn_size=m.lrn_size, lrn_k=m.lrn_k,
      lrn_alpha=m.lrn_alpha, lrn_beta=m.lrn_beta, init_scheme=m.init_scheme,
      dtype=None if m.dtype == 'float32' else dtypes[m.dtype])


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
  """Dataset info, model, optimizer, mesh and the sharded steps for ``config``."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  info = input_pipeline.get_dataset_info(config.data)
  num_classes = resolve_num_classes(config, info)
  model = build_model(config, num_classes)
  tx = optim.make_optimizer(config.optim)
  optim.make_lr_policy(config.optim)  # refuse a bad policy before anything compiles
  mesh = layout_lib.make_mesh(config.mesh.data, config.mesh.model)
  layout = layout_lib.get_layout(config.mesh.layout)
  layout_lib.check_batch(config.batch_size, mesh, layout)
  layout_lib.check_batch(config.eval.batch_size, mesh, layout)
  if config.batch_size % jax.process_count():
    raise ValueError(f'The batch size {config.batch_size} does not divide over '
                     f'{jax.process_count()} processes; choose a multiple of it.')
  check_batch_split_over_processes(mesh, layout, config.batch_size)
  crop = config.data.crop_size
  abstract_state = jax.eval_shape(
      lambda rng: train_lib.create_train_state(rng, model, tx, (1, crop, crop, 3)),
      jax.random.PRNGKey(0))
  steps = layout_lib.make_steps(model, tx, mesh, layout, abstract_state)
  return Setup(config, info, model, tx, mesh, layout, steps, abstract_state)


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
  for i, batch in enumerate(batches):
    if 0 <= max_batches <= i:
      break
    sums = s.steps.eval_step(params, layout_lib.place_batch(batch, s.steps))
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

  Returns the last evaluation's metrics (and 'step', 'stopped_by' when a signal stopped it).
  """
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  workdir = prepare_workdir(workdir)
  is_main = jax.process_index() == 0
  s = setup(config)
  checkpoint_lib.check_and_save_config(config, workdir, s.model.num_classes, write=is_main)
  policy = optim.make_lr_policy(config.optim)
  ckpts = checkpoint_lib.Checkpoints(workdir, keep=config.checkpoint.keep,
                                     async_save=config.checkpoint.async_save)

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
  total_steps = config.num_epochs * steps_per_epoch
  if config.max_steps > 0:
    total_steps = min(total_steps, config.max_steps)
  last_good_step = step if restored is not None else None

  def meta_now():
    return {'epoch': epoch, 'step_in_epoch': step_in_epoch,
            'lr_policy': {k: float(v) for k, v in policy_state.items()},
            'loss_window': list(window), 'loss_since_eval': list(since_eval),
            'last_eval': last_eval}

  def save(val_error=None):
    nonlocal last_good_step
    ckpts.save(step, state, meta_now(), val_top1_error=val_error)
    last_good_step = step

  def check_finite(loss_value, at_step):
    if not math.isfinite(loss_value):
      ckpts.wait()
      where = (f'the last good checkpoint is step {last_good_step} in {ckpts.directory}'
               if last_good_step is not None else 'no checkpoint was saved')
      raise TrainingError(f'The training loss became {loss_value} at step {at_step}; nothing was '
                          f'saved after it ({where}). Lower --config.optim.learning_rate and '
                          'run again (a fresh --workdir, or this one to resume from it).')

  stopped_by = None
  with _StopRequest() as stop:
    while step < total_steps and stopped_by is None:
      lr = policy.learning_rate(policy_state)
      progress = report.EpochProgress(epoch, steps_per_epoch, step_in_epoch,
                                      enabled=is_main and config.progress_bar)
      batches = input_pipeline.train_batches(config.data, global_batch_size=config.batch_size,
                                             seed=config.seed, epoch=epoch,
                                             start_step=step_in_epoch)
      tick, tick_step = time.perf_counter(), step
      pending = []  # device metrics not yet read: reading each step would stall the pipeline
      for batch in batches:
        state, metrics = s.steps.train_step(state, layout_lib.place_batch(batch, s.steps))
        step += 1
        step_in_epoch += 1
        pending.append(metrics['loss'])
        at_log = step % config.log_every_steps == 0
        at_save = step % config.checkpoint.every_steps == 0
        end = step_in_epoch >= steps_per_epoch or step >= total_steps
        if at_log or at_save or end or stop.signal_name or len(pending) >= 50:
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
        if at_log and window[1]:
          writer.write_train(step, epoch + step_in_epoch / steps_per_epoch, lr,
                             window[0] / window[1])
          window = [0.0, 0]
        if stop.signal_name:
          stopped_by = stop.signal_name
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

  if stopped_by is not None:
    save()
  ckpts.close()
  writer.close()
  if is_main:
    if stopped_by is not None:
      print(f'Stopped by {stopped_by}: saved a checkpoint at step {step}; run the same command '
            'to resume.', flush=True)
    else:
      write_plots(workdir, state.params)
      print(f'Done: {step} steps. Checkpoints in {ckpts.directory}; metrics in '
            f'{os.path.join(workdir, report.METRICS_FILE)}; plots in '
            f'{os.path.join(workdir, "plots")}.', flush=True)
  return {**last_eval, 'step': step, 'stopped_by': stopped_by}


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
  if step is None:
    step = ckpts.latest_step()
  state, _ = ckpts.restore(step, _abstract_sharded(s))
  ckpts.close()
  results = {'step': int(step)}
  for name, ten_crop in (('centre_crop', False), ('ten_crop', True)):
    r = evaluate_params(s, state.params, ten_crop, config.eval.max_batches)
    results[name] = r
    if jax.process_index() == 0:
      print(f'checkpoint step {step}, {name.replace("_", " ")}: top-1 error '
            f'{100 * r["val_top1_error"]:.2f}%, top-5 error {100 * r["val_top5_error"]:.2f}% '
            f'on {r["val_examples"]} validation images', flush=True)
  return results
