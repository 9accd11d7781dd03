"""The main job: ``python -m alexnet_jax.main --workdir runs/``.

Trains the config's network (default: the paper's AlexNet on the embedded offline dataset),
resuming from the workdir's latest checkpoint, or evaluates a trained workdir with
``--mode=eval``. Override any config field on the command line: ``--config.batch_size=64``.

Multi-host: every process runs the same command; with ``--coordinator_address``,
``--num_processes`` and ``--process_id`` (or none of them, on SLURM / Open MPI / Cloud TPU where
JAX detects the cluster) the processes join one job through ``jax.distributed.initialize``.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import traceback
import warnings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from alexnet_jax import xla_flags  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'default.py')

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and plots.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'train (resumes if possible) or eval.')
flags.DEFINE_bool('start_over', False,
                  'Train from step 0 even though the workdir holds checkpoints (they are moved '
                  'to damaged_checkpoints/, not deleted): for a workdir whose checkpoints are '
                  'all damaged.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint --mode=eval uses.')
flags.DEFINE_string('coordinator_address', None,
                    'Multi-process: host:port of process 0 (all processes pass the same).')
flags.DEFINE_string('coordinator_bind_address', None,
                    'Multi-process: the address process 0 binds (e.g. 127.0.0.1:port).')
flags.DEFINE_integer('num_processes', None, 'Multi-process: the number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-process: this process\'s index.')
flags.DEFINE_bool('distributed', False,
                  'Join a multi-process job with JAX\'s cluster auto-detection (SLURM, Open MPI, '
                  'Cloud TPU) when no explicit coordinator flags are given. Implied when srun, '
                  'mpirun or a multi-worker TPU slice started several processes.')
flags.DEFINE_integer('heartbeat_timeout_seconds', None,
                     'Multi-process: how soon a dead peer fails the job.')


def _define_config_flag() -> None:
  """Defines --config, once.

  ml_collections loads the default config file and applies the --config.* overrides of
  sys.argv right here, so a misspelt field raises here; :func:`_parse_flags` reports it.
  """
  if 'config' not in FLAGS:
    config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG,
                                    'A config file (ml_collections).', lock_config=True)


def _usage_error(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _config_path(argv) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith(('--config=', '-config=')):
      return arg.split('=', 1)[1]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
  return _DEFAULT_CONFIG


def _unknown_field_message(error: BaseException, argv) -> str:
  """'--config.optim.lerning_rate: no such field ...' from ml_collections' KeyError text."""
  # Parsed: ml_collections names the missing field and its suggestion only in the message
  # (the exception carries no attribute for them), and the flag parser gives no other signal.
  text = str(error)
  names = re.findall(r'[A-Za-z_][A-Za-z0-9_]*', text)
  field = names[0] if names else '?'
  suggestion = re.search(r'Did you mean \W*([A-Za-z0-9_]+)', text)
  override = next((a.split('=', 1)[0] for a in argv
                   if a.lstrip('-').startswith('config.')
                   and field in a.split('=', 1)[0].split('.')), f'--config.{field}')
  hint = f' (did you mean {suggestion.group(1)!r}?)' if suggestion else ''
  return (f'unknown config field {override}: the config has no field {field!r}{hint}; check '
          f'the name against {_config_path(argv)}.')


def _parse_flags(argv):
  """absl's flag parsing, with every mistake in a flag reported as one ``error:`` line."""
  try:
    _define_config_flag()
    rest = FLAGS(argv)
  except flags.Error as e:
    lines = str(e).strip().splitlines()
    _usage_error(f'{lines[0] if lines else e}; run with --helpfull to list the flags.')
  except (AttributeError, KeyError) as e:  # a --config.<field> the config does not have
    _usage_error(_unknown_field_message(e, argv))
  except Exception as e:  # pylint: disable=broad-except  (the config file raised)
    _config_file_error(e, argv)
  try:
    # A file that failed to load is an object raising on first use: use it now.
    FLAGS.config.get('seed')
  except Exception as e:  # pylint: disable=broad-except  (anything wrong in the user's file)
    _config_file_error(e, argv)
  return rest


def _config_file_error(error: BaseException, argv) -> None:
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  reason = lines[-1] if lines else ''
  if not isinstance(error, OSError):
    reason = f'{type(error).__name__}: {reason}' if reason else type(error).__name__
  _usage_error(f'cannot load the config file {_config_path(argv)} ({reason}); pass an '
               'ml_collections config file such as alexnet_jax/configs/default.py to --config.')


def _show_warning(message, category, filename, lineno, file=None, line=None):
  """The package's own warnings (skipped files, ...) as one 'warning:' line each."""
  if os.path.dirname(os.path.abspath(filename)).startswith(os.path.dirname(__file__)):
    print(f'warning: {message}', file=file or sys.stderr, flush=True)
  else:
    _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


class _StderrFilter:
  """``sys.stderr`` minus the 'Event loop is closed' tracebacks of a failed checkpoint write.

  When a write fails (a full disk), Orbax's event loop closes while tensorstore still completes
  the other chunks' futures, and tensorstore prints each completion's error straight to
  sys.stderr (not through sys.excepthook). The failure is reported once, in plain words, by
  the checkpoint code; these dozens of identical tracebacks would only bury that line. Every
  other traceback passes through unchanged.
  """

  _HEADER = 'Traceback (most recent call last)'
  _DROPPED = 'RuntimeError: Event loop is closed'

  def __init__(self, stream):
    self._stream = stream
    # Per thread: a traceback being written, held until its last line says what it is. Per
    # thread, so that lines other threads write meanwhile (the job's own error line) pass.
    self._held = {}
    self._lock = threading.Lock()

  def write(self, text: str) -> int:
    thread = threading.get_ident()
    with self._lock:
      held = self._held.get(thread)
      if held is None and text.startswith(self._HEADER):
        held = ''
      if held is None:
        return self._stream.write(text)
      held += text
      lines = held.splitlines()
      # A traceback ends with its first unindented line after the header: the exception.
      if len(lines) > 1 and held.endswith('\n') and not lines[-1].startswith((' ', '\t')):
        self._held.pop(thread, None)
        if lines[-1].strip() != self._DROPPED:
          self._stream.write(held)
      else:
        self._held[thread] = held
      return len(text)

  def flush(self) -> None:
    with self._lock:
      self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def _launched_as_multiprocess_job() -> bool:
  """True under a launcher JAX can read that started several processes (no flags needed).

  SLURM's srun with more than one task, Open MPI's mpirun with more than one rank, or a Cloud
  TPU slice with several workers. A single task (or ``sbatch`` without ``srun``) stays a
  single-process job.
  """
  env = os.environ
  if 'SLURM_STEP_ID' in env and int(env.get('SLURM_STEP_NUM_TASKS', env.get('SLURM_NTASKS', '1'))
                                     or 1) > 1:
    return True
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1:
    return True
  return len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1


def _initialize_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError('Pass all three of --coordinator_address, --num_processes and '
                       '--process_id, or none of them.')
    kwargs = {}
    if FLAGS.coordinator_bind_address:
      kwargs['coordinator_bind_address'] = FLAGS.coordinator_bind_address
    if FLAGS.heartbeat_timeout_seconds:
      kwargs['heartbeat_timeout_seconds'] = FLAGS.heartbeat_timeout_seconds
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id, **kwargs)
  elif FLAGS.distributed or _launched_as_multiprocess_job():
    # The cluster gives the coordinator and the process ids; a dead peer must still fail fast.
    jax.distributed.initialize(**({'heartbeat_timeout_seconds': FLAGS.heartbeat_timeout_seconds}
                                  if FLAGS.heartbeat_timeout_seconds else {}))


def main(argv) -> None:
  if len(argv) > 1:
    raise ValueError(f'Unexpected arguments: {" ".join(argv[1:])}; flags take the form '
                     '--name=value.')
  if not FLAGS.workdir:
    raise ValueError('--workdir is required, e.g. --workdir runs/')
  # Orbax and TF log every file operation at INFO, and Orbax logs failed writes with their
  # tracebacks at ERROR: the user reads the progress bar and the one-line messages instead.
  verbose = bool(os.environ.get('ALEXNET_JAX_TRACEBACK'))
  logging.set_verbosity(logging.ERROR if verbose else logging.FATAL)
  warnings.showwarning = _show_warning
  if not verbose:
    sys.stderr = _StderrFilter(sys.stderr)
  # Before JAX creates its backends (XLA reads its flags then); a value in XLA_FLAGS wins.
  xla_flags.use_recommended_cpu_flags()
  _initialize_distributed()
  # TensorFlow is imported only by the input pipeline (which keeps it off the accelerators),
  # after the checks of the workdir, the mesh and the batch sizes: those fail in seconds.
  from alexnet_jax import trainer  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  if FLAGS.mode == 'train':
    trainer.train_and_evaluate(config, FLAGS.workdir, start_over=FLAGS.start_over)
  else:
    trainer.evaluate(config, FLAGS.workdir, FLAGS.checkpoint)


# Errors a user can cause: one sentence, no traceback (set ALEXNET_JAX_TRACEBACK=1 to see it).
# TypeError, KeyError and AttributeError are not among them: raised by our code they are
# programming errors, reported with where they happened (the config flags' own KeyError and
# AttributeError are caught while parsing, in _parse_flags).
_USER_ERRORS = (ValueError, OSError, RuntimeError)


def run() -> None:
  """Console entry point with clear one-line errors for what a user can cause."""
  try:
    app.run(main, flags_parser=_parse_flags)
  except SystemExit:
    raise
  except KeyboardInterrupt:  # a second Ctrl-C (the first asks for a clean stop)
    print('Interrupted: the steps since the last checkpoint are lost; run the same command to '
          'resume from it.', file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get('ALEXNET_JAX_TRACEBACK'):
      traceback.print_exc()  # then the same line and exit code as without it
    text = str(e).strip()
    message = text.splitlines()[0] if text else type(e).__name__
    if isinstance(e, _USER_ERRORS):
      print(f'error: {message}', file=sys.stderr)
      sys.exit(2 if not isinstance(e, RuntimeError) else 1)
    # Not an error a user causes: say so, and where the traceback is.
    last = traceback.extract_tb(e.__traceback__)[-1]
    print(f'error: {type(e).__name__}: {message} (at {os.path.basename(last.filename)}:'
          f'{last.lineno}; set ALEXNET_JAX_TRACEBACK=1 to see the traceback)', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  run()
