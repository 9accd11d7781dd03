"""What the user sees of a run: metrics.jsonl, TensorBoard events, progress bars and plots.

Host-side only: no JAX computation, and no TensorFlow import (TensorBoard event files are
written with TensorBoard's own protos and record framing).

Files under the run's ``workdir``::

    metrics.jsonl      one JSON object per event ('train' or 'eval'), appended; a resumed run
                       first drops the lines written after its checkpoint (``resume_step``)
    tensorboard/       TensorBoard event files (scalars), one file per writer session
    plots/curves.png   training loss, validation errors and learning rate against epoch
    plots/conv1.png    the 96 conv1 kernels, one block per tower (the paper's Figure 3)

Only the first JAX process should write: pass ``enabled=(jax.process_index() == 0)``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
PLOTS_DIR = 'plots'

# Keys of a record that are bookkeeping, not scalars to chart.
_NOT_SCALARS = frozenset({'event', 'step', 'epoch', 'wall_time'})
# An eval record repeats the current training loss and rate: chart them once, from train records.
_TRAIN_ONLY = frozenset({'lr', 'train_loss', 'images_per_sec'})


def _plain(value: Any) -> Any:
  """A JSON-ready Python value for numpy/JAX scalars, lists and plain values."""
  if isinstance(value, (str, bool)) or value is None:
    return value
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  arr = np.asarray(value)
  if arr.ndim == 0:
    return arr.item()
  return arr.tolist()


def read_metrics(workdir: str | os.PathLike, max_step: int | None = None) -> list[dict]:
  """The records of ``<workdir>/metrics.jsonl``, in file order ([] when there is none).

  Lines that do not parse (the last line of a process killed mid-write) are skipped; with
  ``max_step`` the records of later steps are dropped.
  """
  path = os.path.join(os.fspath(workdir), METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if not isinstance(record, dict):
        continue
      if max_step is not None and record.get('step', 0) > max_step:
        continue
      records.append(record)
  return records


# --------------------------------------------------------------------------------------------
# TensorBoard event files: TensorBoard's own protos and record framing, not a library writer.
# tensorboard's EventFileWriter opens its file through tensorboard.compat.tf, which imports
# TensorFlow whenever it is installed (3 s and TF's log lines here), and names it
# events.out.tfevents.<whole second>.<host>.<pid>.<per-process counter><suffix>: within one
# second TensorBoard, reading files in name order, reads a resume from a smaller pid, or a
# counter of 10 after one of 9, before the session it resumes, whatever the suffix (the
# tests of one second in tests/test_report.py fail with it). tensorboardX imports torch
# whenever it is installed (2 s per process); clu writes through TensorFlow.
# --------------------------------------------------------------------------------------------
class _EventFile:
  """Scalars into one TensorBoard event file of ``logdir``; ``purge_step`` marks a restart, so
  that TensorBoard hides the older files' events at steps >= it."""

  def __init__(self, logdir: str, purge_step: int | None):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    os.makedirs(logdir, exist_ok=True)
    # TensorBoard reads a directory's files in name order: two sessions of one second (a quick
    # resume, or a test) need names that sort in time order (zero-padded nanoseconds; the host
    # and pid keep names unique).
    name = (f'events.out.tfevents.{time.time_ns():020d}.{socket.gethostname()}.'
            f'{os.getpid()}')
    self._records = RecordWriter(open(os.path.join(logdir, name), 'wb'))  # pylint: disable=consider-using-with
    now = time.time()
    self._add(event_pb2.Event(wall_time=now, file_version='brain.Event:2'))
    if purge_step is not None:
      self._add(event_pb2.Event(wall_time=now, step=purge_step, session_log=event_pb2.SessionLog(
          status=event_pb2.SessionLog.START)))

  def _add(self, event) -> None:
    self._records.write(event.SerializeToString())

  def add_scalar(self, tag: str, value: float, step: int, walltime: float) -> None:
    value = self._summary_pb2.Summary.Value(tag=tag, simple_value=value)
    self._add(self._event_pb2.Event(wall_time=walltime, step=step,
                                    summary=self._summary_pb2.Summary(value=[value])))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()


class MetricsWriter:
  """Appends metrics to ``<workdir>/metrics.jsonl`` and TensorBoard files under ``tensorboard/``.

  Every record has ``event`` ('train' or 'eval'), ``step``, ``epoch`` and ``wall_time`` (Unix
  seconds) and the scalars given: train records ``lr`` and ``train_loss``, eval records
  also ``val_top1_error`` and ``val_top5_error`` as fractions. TensorBoard gets every numeric
  scalar under its key as tag (``train_loss``, ``lr``, ``val_top1_error``, ...; an eval's copy
  of ``lr`` and ``train_loss`` is not charted twice). Each JSON line is flushed when written;
  the TensorBoard file on each eval and on :meth:`close`.

  Args:
    workdir: the run's directory (created if needed).
    enabled: False (every JAX process but the first) writes nothing at all.
    resume_step: the step of the checkpoint a resumed run restarts from: records of later
      steps (written after that checkpoint by the interrupted run) are removed from
      metrics.jsonl, and TensorBoard is told to hide them too.
    drop_evals_at_resume_step: also remove eval records of ``resume_step`` itself (its
      evaluation is about to be done again).
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True,
               resume_step: int | None = None, drop_evals_at_resume_step: bool = False):
    self.workdir = os.fspath(workdir)
    self.enabled = enabled
    self._file = None
    self._events = None
    if not enabled:
      return
    os.makedirs(self.workdir, exist_ok=True)
    self.metrics_path = os.path.join(self.workdir, METRICS_FILE)
    if os.path.exists(self.metrics_path):
      # Rewrite what is kept: drops later steps and any half-written last line, so that new
      # lines never get glued to a fragment.
      kept = read_metrics(self.workdir, max_step=resume_step)
      if drop_evals_at_resume_step:
        kept = [r for r in kept
                if not (r.get('event') == 'eval' and r.get('step') == resume_step)]
      tmp = self.metrics_path + '.tmp'
      with open(tmp, 'w', encoding='utf-8') as f:
        for record in kept:
          f.write(json.dumps(record) + '\n')
      os.replace(tmp, self.metrics_path)
    self._file = open(self.metrics_path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with
    self._events = _EventFile(os.path.join(self.workdir, TENSORBOARD_DIR),
                               None if resume_step is None else int(resume_step) + 1)

  def write(self, event: str, step: int, epoch: float, scalars: Mapping[str, Any]) -> dict:
    """Append one record and return it (also when disabled, then writing nothing)."""
    record = {'event': event, 'step': int(step), 'epoch': _plain(epoch),
              'wall_time': time.time()}
    record.update({k: _plain(v) for k, v in scalars.items()})
    if not self.enabled:
      return record
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    skip = _NOT_SCALARS if event == 'train' else _NOT_SCALARS | _TRAIN_ONLY
    chart = {k: v for k, v in record.items()
             if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}
    for tag, value in chart.items():
      self._events.add_scalar(tag, float(value), int(step), walltime=record['wall_time'])
    if event == 'eval':
      self._events.flush()
    return record

  def write_train(self, step: int, epoch: float, lr: float, train_loss: float,
                  **scalars: Any) -> dict:
    """A 'train' record: the rate and the (recent mean) training loss, plus any scalars."""
    return self.write('train', step, epoch, {'lr': lr, 'train_loss': train_loss, **scalars})

  def write_eval(self, step: int, epoch: float, lr: float, train_loss: float,
                 val_top1_error: float, val_top5_error: float, **scalars: Any) -> dict:
    """An 'eval' record; errors are fractions in [0, 1]."""
    return self.write('eval', step, epoch, {
        'lr': lr, 'train_loss': train_loss, 'val_top1_error': val_top1_error,
        'val_top5_error': val_top5_error, **scalars})

  def flush(self) -> None:
    if self.enabled:
      self._file.flush()
      self._events.flush()

  def close(self) -> None:
    """Flush and close the files (idempotent)."""
    if self.enabled and self._file is not None:
      self._file.close()
      self._events.close()
      self._file = self._events = None
      self.enabled = False

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# --------------------------------------------------------------------------------------------
# Console: progress bar and evaluation summary
# --------------------------------------------------------------------------------------------
class EpochProgress:
  """A tqdm bar over one epoch's steps with loss, images/s and tqdm's ETA.

  ``initial_step`` is the number of this epoch's steps already done (a resumed run).
  ``enabled=False`` (other processes, or quiet runs) shows nothing.
  """

  def __init__(self, epoch: int, total_steps: int, initial_step: int = 0, enabled: bool = True):
    from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top
    self._bar = tqdm_auto.tqdm(total=total_steps, initial=initial_step, desc=f'epoch {epoch}',
                               unit='step', disable=not enabled, dynamic_ncols=True,
                               leave=True, mininterval=1.0)

  def update(self, n_steps: int, loss: float | None = None,
             images_per_sec: float | None = None) -> None:
    postfix = {}
    if loss is not None:
      postfix['loss'] = f'{float(loss):.4f}'
    if images_per_sec is not None:
      postfix['img/s'] = f'{float(images_per_sec):.0f}'
    if postfix:
      self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(n_steps)

  def close(self) -> None:
    self._bar.close()

  def __enter__(self) -> EpochProgress:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def format_eval_summary(epoch: float, step: int, metrics: Mapping[str, Any]) -> str:
  """One line for an evaluation, e.g. ``epoch 3 step 1200 | val top-1 45.21% top-5 21.03% | ...``.

  Errors (fractions) are shown as percentages; missing keys are left out.
  """
  parts = [f'epoch {_plain(epoch):g} step {int(step)}']
  errors = []
  if 'val_top1_error' in metrics:
    errors.append(f'top-1 {100 * float(metrics["val_top1_error"]):.2f}%')
  if 'val_top5_error' in metrics:
    errors.append(f'top-5 {100 * float(metrics["val_top5_error"]):.2f}%')
  if errors:
    parts.append('val error ' + ' '.join(errors))
  if 'val_loss' in metrics:
    parts.append(f'val loss {float(metrics["val_loss"]):.4f}')
  if 'train_loss' in metrics:
    parts.append(f'train loss {float(metrics["train_loss"]):.4f}')
  if 'lr' in metrics:
    parts.append(f'lr {float(metrics["lr"]):.3g}')
  return ' | '.join(parts)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
def _series(records: Iterable[Mapping], event: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  points = [(r['epoch'], r[key]) for r in records
            if r.get('event') == event and r.get(key) is not None and r.get('epoch') is not None]
  if not points:
    return np.zeros(0), np.zeros(0)
  x, y = np.asarray(points, dtype=np.float64).T
  return x, y


def plot_curves(records: Iterable[Mapping], path: str | os.PathLike) -> str:
  """Training loss, validation top-1/top-5 error (%) and learning rate against epoch, as a PNG.

  ``records`` are :func:`read_metrics` records; panels without data say so. Returns the path.
  """
  # The object-oriented API with the Agg canvas: no pyplot, no global backend change.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  records = list(records)
  fig = Figure(figsize=(15, 4.2), dpi=100, layout='constrained')
  FigureCanvasAgg(fig)
  ax_loss, ax_err, ax_lr = fig.subplots(1, 3)

  def no_data(ax):
    ax.text(0.5, 0.5, 'no data yet', ha='center', va='center', transform=ax.transAxes,
            color='gray')

  x, y = _series(records, 'train', 'train_loss')
  if x.size:
    ax_loss.plot(x, y, color='tab:blue', lw=1)
  else:
    no_data(ax_loss)
  ax_loss.set(title='training loss', xlabel='epoch', ylabel='cross-entropy')

  plotted = False
  for key, label, color in (('val_top1_error', 'top-1', 'tab:red'),
                            ('val_top5_error', 'top-5', 'tab:orange')):
    x, y = _series(records, 'eval', key)
    if x.size:
      ax_err.plot(x, 100 * y, marker='o', ms=3, color=color, label=label)
      plotted = True
  if plotted:
    ax_err.legend()
  else:
    no_data(ax_err)
  ax_err.set(title='validation error', xlabel='epoch', ylabel='error (%)')

  x, y = _series(records, 'train', 'lr')
  if x.size:
    ax_lr.step(x, y, where='post', color='tab:green')
    if np.all(y > 0):
      ax_lr.set_yscale('log')
  else:
    no_data(ax_lr)
  ax_lr.set(title='learning rate', xlabel='epoch', ylabel='rate')
  for ax in (ax_loss, ax_err, ax_lr):
    ax.grid(alpha=0.3)

  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path)
  return path


def conv1_filter_grid(kernel: Any, towers: int = 2, columns: int = 16, border: int = 1,
                      tower_gap: int = 4) -> np.ndarray:
  """The conv1 kernels (kh, kw, 3, C) as one RGB image in [0, 1], shape (H, W, 3).

  Each kernel is min-max normalised on its own. Kernels are laid out in reading order, one
  block of rows per tower (output channels ``[t*C/towers, (t+1)*C/towers)`` in block ``t``, as
  in the paper's Figure 3 where the top 48 came from GPU 1), separated by white lines of
  ``border`` pixels and by ``tower_gap`` white rows between blocks.
  """
  k = np.asarray(kernel, dtype=np.float64)
  if k.ndim != 4 or k.shape[2] != 3:
    raise ValueError(f'conv1 kernel must be (kh, kw, 3, C), got {k.shape}; pass '
                     "params['conv1']['kernel'].")
  kh, kw, _, count = k.shape
  if count % towers:
    raise ValueError(f'{count} kernels do not split into {towers} towers.')
  low = k.min(axis=(0, 1, 2), keepdims=True)
  span = k.max(axis=(0, 1, 2), keepdims=True) - low
  k = np.where(span > 0, (k - low) / np.where(span > 0, span, 1.0), 0.5)
  per_tower = count // towers
  columns = min(columns, per_tower)
  rows = math.ceil(per_tower / columns)
  block_h = rows * (kh + border) + border
  width = columns * (kw + border) + border
  image = np.ones((towers * block_h + (towers - 1) * tower_gap, width, 3))
  for i in range(count):
    tower, j = divmod(i, per_tower)
    row, col = divmod(j, columns)
    top = tower * (block_h + tower_gap) + border + row * (kh + border)
    left = border + col * (kw + border)
    image[top:top + kh, left:left + kw] = k[:, :, :, i]
  return image


def plot_conv1_filters(conv1_kernel: Any, path: str | os.PathLike, scale: int = 4,
                       towers: int = 2, columns: int = 16) -> str:
  """Save :func:`conv1_filter_grid` as a PNG, each pixel a ``scale`` x ``scale`` square."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = conv1_filter_grid(conv1_kernel, towers=towers, columns=columns)
  pixels = np.round(grid * 255).astype(np.uint8)
  pixels = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  Image.fromarray(pixels).save(path)
  return path
