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
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'default.py')

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and plots.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'train (resumes if possible) or eval.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint --mode=eval uses.')
flags.DEFINE_string('coordinator_address', None,
                    'Multi-process: host:port of process 0 (all processes pass the same).')
flags.DEFINE_string('coordinator_bind_address', None,
                    'Multi-process: the address process 0 binds (e.g. 127.0.0.1:port).')
flags.DEFINE_integer('num_processes', None, 'Multi-process: the number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-process: this process\'s index.')
flags.DEFINE_bool('distributed', False,
                  'Join a multi-process job with JAX\'s cluster auto-detection (SLURM, Open MPI, '
                  'Cloud TPU) when no explicit coordinator flags are given.')
flags.DEFINE_integer('heartbeat_timeout_seconds', None,
                     'Multi-process: how soon a dead peer fails the job.')
config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'A config file (ml_collections).',
                                lock_config=True)


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
  elif FLAGS.distributed:
    # The cluster gives the coordinator and the process ids; a dead peer must still fail fast.
    jax.distributed.initialize(**({'heartbeat_timeout_seconds': FLAGS.heartbeat_timeout_seconds}
                                  if FLAGS.heartbeat_timeout_seconds else {}))


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required, e.g. --workdir runs/')
  # Orbax and TF log every file operation at INFO; the user reads the progress bar instead.
  logging.set_verbosity(logging.ERROR)
  _initialize_distributed()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # tf.data only: TF must not take the accelerator
  from alexnet_jax import trainer  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  if FLAGS.mode == 'train':
    trainer.train_and_evaluate(config, FLAGS.workdir)
  else:
    trainer.evaluate(config, FLAGS.workdir, FLAGS.checkpoint)


# Errors a user can cause: one sentence, no traceback (set ALEXNET_JAX_TRACEBACK=1 to see it).
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
                KeyError, AttributeError, TypeError, OSError, RuntimeError)


def run() -> None:
  """Console entry point with clear one-line errors for what a user can cause."""
  try:
    app.run(main)
  except SystemExit:
    raise
  except KeyboardInterrupt:
    print('Interrupted.', file=sys.stderr)
    sys.exit(130)
  except _USER_ERRORS as e:  # pylint: disable=broad-except
    if os.environ.get('ALEXNET_JAX_TRACEBACK'):
      raise
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2 if not isinstance(e, RuntimeError) else 1)


if __name__ == '__main__':
  run()
