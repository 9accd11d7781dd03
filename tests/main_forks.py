"""Runs several ``python -m alexnet_jax.main`` command lines from one warmed-up process.

    python tests/main_forks.py JOBS.json

JOBS.json is ``{"parallel": N, "jobs": [{"argv": [...], "stdout": PATH, "stderr": PATH}]}``;
``argv`` is a whole command line as ``tiny_config.Session.command`` builds it (``python -m
alexnet_jax.main --workdir=... ...``), a job's optional ``fsize_limit`` the RLIMIT_FSIZE in bytes
it runs under (as ``ulimit -f`` before the command). This process imports what every run
imports (JAX, TensorFlow, Orbax, absl: about 10 s of CPU on the test machine, more than a
refused run itself takes), then forks one child per command line, ``parallel`` at a time; the
child runs the module as ``python -m`` does (``runpy``, ``__main__``, ``sys.argv``) with its
stdout and stderr in those files. JAX's backend is never started here, only in the children,
so each child sets up its own devices and flags. Prints ``{"returncodes": [...]}`` last.

Forking is safe here because nothing but the main thread runs Python at a fork (checked before
each one): the imports start a single native thread, NumPy's OpenBLAS server (seen in gdb),
which OpenBLAS itself shuts down before a fork and restarts after it (its pthread_atfork
handlers). A forked child has no copy of any other thread, so a lock one of them held would
stay held in the child forever.
"""
import json
import os
import resource
import runpy
import sys
import threading

MODULE_PREFIX = ['-m', 'alexnet_jax.main']


def _preload() -> None:
  # TensorFlow reads these when imported: set as alexnet_jax.main sets them before its imports.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  # What alexnet_jax.main imports before and during a run, except alexnet_jax.main itself (its
  # flags are defined when the child runs it as __main__; defined twice, absl would refuse).
  import absl.app  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import ml_collections.config_flags  # noqa: F401  pylint: disable=g-import-not-at-top
  from alexnet_jax import input_pipeline  # noqa: F401  pylint: disable=g-import-not-at-top
  from alexnet_jax import trainer  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  # The metrics writer's event-file protos.
  import tensorboard.compat.proto.event_pb2  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorboard.summary.writer.record_writer  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


def _child(argv: list[str], stdout: str, stderr: str, fsize_limit: int | None) -> None:
  """Runs in the forked child; never returns."""
  code = 1
  try:
    if fsize_limit is not None:  # as `ulimit -f` in a shell before the command
      resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
    for target, path in ((1, stdout), (2, stderr)):
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
      os.dup2(fd, target)
      os.close(fd)
    assert argv[1:3] == MODULE_PREFIX, argv
    sys.argv = [os.path.join(os.getcwd(), 'alexnet_jax', 'main.py')] + argv[3:]
    try:
      runpy.run_module('alexnet_jax.main', run_name='__main__', alter_sys=True)
      code = 0
    except SystemExit as e:  # as the interpreter treats it: an int, None (0), or text (1)
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if e.code is not None and not isinstance(e.code, int):
        print(e.code, file=sys.stderr)
    # As the interpreter does at exit (absl and the job's own atexit handlers included).
    import atexit  # pylint: disable=g-import-not-at-top
    atexit._run_exitfuncs()  # pylint: disable=protected-access
  except BaseException:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    code = 1
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def main() -> None:
  with open(sys.argv[1], encoding='utf-8') as f:
    spec = json.load(f)
  jobs, parallel = spec['jobs'], spec['parallel']
  _preload()
  returncodes = [None] * len(jobs)
  running = {}  # pid -> job index
  for i, job in enumerate(jobs + [None]):
    while running and (job is None or len(running) >= parallel):
      pid, status = os.wait()
      returncodes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    if job is None:
      break
    if threading.active_count() != 1:
      raise RuntimeError(f'main_forks: threads started before a fork: {threading.enumerate()}')
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      _child(job['argv'], job['stdout'], job['stderr'], job.get('fsize_limit'))
    running[pid] = i
  print(json.dumps({'returncodes': returncodes}), flush=True)


if __name__ == '__main__':
  main()
