"""A tiny run of the main job for the end-to-end tests, and the helpers that launch it.

As a config file (``--config tests/tiny_config.py --config.data.folder=DIR``) it is the paper's
network (all five conv and three fc layers) at the smallest input it takes, 67x67 (fc6 sees
1x1x256: a 20M-parameter model whose checkpoints take 160 MB, not 460 MB, and whose steps and
compiles are cheap on 2 cores), on a small image folder: batch 4, two epochs of 4 steps, a
checkpoint every 2 steps, every step logged, and the learning rate divided by 10 after the first
epoch (so resuming must also restore the rate policy's state).

As a module (``import tiny_config`` from the tests) it builds that image folder, with the
bad files a real folder holds, and runs ``python -m alexnet_jax.main`` in subprocesses on 2
fake CPU devices that share one JAX compilation cache (compiling AlexNet costs more than
training it here). :func:`reference_run` is the uninterrupted run several tests compare with;
it runs once per test session.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from alexnet_jax.configs import folder as folder_config

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_PATH = os.path.abspath(__file__)
REPO = os.path.dirname(HERE)

NUM_CLASSES = 2
TRAIN_GOOD_PER_CLASS = 7  # + a 1x1 image and an RGBA image in class 0: 16 train = 4 batches
VAL_PER_CLASS = 2
STEPS_PER_EPOCH = 4
NUM_EPOCHS = 2
TOTAL_STEPS = STEPS_PER_EPOCH * NUM_EPOCHS
CHECKPOINT_EVERY = 2
SMALLEST_CROP = 67  # conv1 15 -> pool 7 -> pool 3 -> pool 1 (config_checks.smallest_crop)
# Files the folder scan must skip (the 1x1 and RGBA images are usable and kept).
SKIPPED_FILES = ('corrupt.jpg', 'empty.jpg', 'notes.jpg')


def get_config():
  """The tiny run (see the module docstring); data.folder is set on the command line."""
  c = folder_config.get_config()
  c.data.folder = ''
  c.data.crop_size = SMALLEST_CROP
  c.data.resize_size = 72  # the random crops still move (5 px) and the centre crop is inside
  c.data.num_parallel_calls = 2
  c.data.prefetch = 1
  c.batch_size = 4
  c.num_epochs = NUM_EPOCHS
  c.optim.lr_policy = 'steps'
  c.optim.step_epochs = (1,)
  c.eval.batch_size = 2
  c.eval.max_batches = -1
  c.eval.ten_crop = False
  c.checkpoint.every_steps = CHECKPOINT_EVERY
  c.checkpoint.keep = 2
  c.log_every_steps = 1
  c.progress_bar = False
  return c


def small_config(folder: str, overrides: dict | None = None):
  """tiny_config's run (67x67 input) in batches of 8 for in-process runs: 16 images, two steps
  per epoch, two epochs, on every device."""
  c = get_config()
  c.data.folder = folder
  c.batch_size = 8
  c.eval.batch_size = 4
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 1
  c.log_every_steps = 3  # a window of losses spans a stop
  for dotted, value in (overrides or {}).items():
    *parents, last = dotted.split('.')
    target = c
    for key in parents:
      target = target[key]
    target[last] = value
  return c


# --------------------------------------------------------------------------------------------
# The image folder
# --------------------------------------------------------------------------------------------
def _image(seed: int, size=(256, 320), mode='RGB'):
  import numpy as np  # pylint: disable=g-import-not-at-top  (not needed as a config file)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  h, w = size
  # Smooth random colour fields: compressible, and different per class via the seed.
  base = rng.integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
  image = Image.fromarray(base).resize((w, h), Image.BILINEAR)
  return image.convert(mode) if mode != 'RGB' else image


def _jpeg_bytes(image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def make_image_folder(root: str) -> str:
  """``root/train/<class>/`` and ``root/val/<class>/`` with good and bad files; returns root."""
  for c in range(NUM_CLASSES):
    train_dir = os.path.join(root, 'train', f'class{c}')
    val_dir = os.path.join(root, 'val', f'class{c}')
    os.makedirs(train_dir)
    os.makedirs(val_dir)
    for i in range(TRAIN_GOOD_PER_CLASS):
      with open(os.path.join(train_dir, f'img{i}.jpg'), 'wb') as f:
        f.write(_jpeg_bytes(_image(1000 * c + i)))
    for i in range(VAL_PER_CLASS):
      with open(os.path.join(val_dir, f'img{i}.jpg'), 'wb') as f:
        f.write(_jpeg_bytes(_image(1000 * c + 500 + i)))
  bad_dir = os.path.join(root, 'train', 'class0')
  good = _jpeg_bytes(_image(7))
  with open(os.path.join(bad_dir, 'corrupt.jpg'), 'wb') as f:
    f.write(good[:len(good) // 2])  # a JPEG cut off halfway
  open(os.path.join(bad_dir, 'empty.jpg'), 'wb').close()  # zero bytes
  with open(os.path.join(bad_dir, 'notes.jpg'), 'w', encoding='utf-8') as f:
    f.write('not an image, despite the name\n')
  _image(8, size=(1, 1)).save(os.path.join(bad_dir, 'tiny.png'))  # 1x1: kept, upscaled
  _image(9, size=(200, 300), mode='RGBA').save(os.path.join(bad_dir, 'alpha.png'))  # kept, RGB
  return root


# --------------------------------------------------------------------------------------------
# Running the main job
# --------------------------------------------------------------------------------------------
def child_xla_flags(devices: int) -> str:
  """The test process's ``XLA_FLAGS`` (conftest's, a user's own) for a process of its own with
  ``devices`` fake CPU devices."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count=')]
  return ' '.join(flags + [f'--xla_force_host_platform_device_count={devices}'])


class Session:
  """Per-test-session paths: the image folder and the shared compilation cache."""

  def __init__(self, base: str, folder: str | None = None):
    self.base = base
    self.folder = folder or make_image_folder(os.path.join(base, 'images'))
    self.cache_dir = os.path.join(base, 'jax_cache')
    self._counter = 0

  def new_dir(self, name: str) -> str:
    self._counter += 1
    path = os.path.join(self.base, f'{name}_{self._counter}')
    os.makedirs(path)
    return path

  def env(self, **extra) -> dict:
    env = dict(os.environ)
    env.update({
        # 2 devices (the test process's conftest asks for 4 for itself).
        'XLA_FLAGS': child_xla_flags(2),
        'JAX_PLATFORMS': 'cpu',
        'JAX_COMPILATION_CACHE_DIR': self.cache_dir,
        'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
        'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '-1',
        'TF_CPP_MIN_LOG_LEVEL': '2',
        'PYTHONUNBUFFERED': '1',
    })
    env.pop('ALEXNET_JAX_TRACEBACK', None)
    env.update(extra)
    return env

  def command(self, workdir: str, *flags: str, config: bool = True) -> list[str]:
    cmd = [sys.executable, '-m', 'alexnet_jax.main', f'--workdir={workdir}']
    if config:
      cmd += [f'--config={CONFIG_PATH}', f'--config.data.folder={self.folder}']
    return cmd + list(flags)

  def start(self, cmd: list[str], log_path: str, **popen_kwargs) -> subprocess.Popen:
    """Starts ``cmd`` in its own process group, stdout and stderr into ``log_path``."""
    log = open(log_path, 'wb')  # pylint: disable=consider-using-with
    try:
      return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                              env=popen_kwargs.pop('env', None) or self.env(),
                              start_new_session=True, **popen_kwargs)
    finally:
      log.close()

  def run(self, cmd: list[str], timeout: float, env=None, **popen_kwargs) -> 'Result':
    """Runs ``cmd`` to the end (killing its process group after ``timeout`` seconds)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env=env or self.env(), start_new_session=True, **popen_kwargs)
    try:
      out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      kill_group(proc)
      out, err = proc.communicate()
      raise AssertionError(f'{" ".join(cmd)} ran over {timeout} s; output:\n'
                           f'{out.decode(errors="replace")}\n{err.decode(errors="replace")}')
    return Result(proc.returncode, out.decode(errors='replace'), err.decode(errors='replace'))

  def run_forked(self, cmds: list[list[str]], timeout: float, parallel: int = 2,
                 fsize_limits: dict[int, int] | None = None) -> list['Result']:
    """Runs each command line of :meth:`command` to the end, as :meth:`run` does, but forked
    from one process that imported JAX, TensorFlow and Orbax once (``main_forks.py``), at most
    ``parallel`` at a time, in order: for commands that fail in seconds, those imports are
    most of a run's cost. ``timeout`` is for all of them together; ``fsize_limits`` maps the
    index of a command to the RLIMIT_FSIZE (bytes) it runs under."""
    base = self.new_dir('forked')
    jobs = [{'argv': cmd, 'stdout': os.path.join(base, f'{i}.out'),
             'stderr': os.path.join(base, f'{i}.err'),
             'fsize_limit': (fsize_limits or {}).get(i)} for i, cmd in enumerate(cmds)]
    jobs_path = os.path.join(base, 'jobs.json')
    with open(jobs_path, 'w', encoding='utf-8') as f:
      json.dump({'parallel': parallel, 'jobs': jobs}, f)
    driver = self.run([sys.executable, os.path.join(HERE, 'main_forks.py'), jobs_path], timeout)
    assert driver.returncode == 0, driver
    returncodes = json.loads(driver.stdout.strip().splitlines()[-1])['returncodes']
    results = []
    for job, returncode in zip(jobs, returncodes):
      with open(job['stdout'], encoding='utf-8', errors='replace') as out, \
           open(job['stderr'], encoding='utf-8', errors='replace') as err:
        results.append(Result(returncode, out.read(), err.read()))
    return results


class Result:
  """A finished command: return code and its two streams."""

  def __init__(self, returncode: int, stdout: str, stderr: str):
    self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

  @property
  def output(self) -> str:
    return self.stdout + self.stderr

  def __repr__(self):
    return f'Result(rc={self.returncode})\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}'


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
  """Sends ``sig`` to the process group of ``proc`` (started with start_new_session)."""
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass
  if sig == signal.SIGKILL:
    proc.wait()


def wait_until(predicate, proc: subprocess.Popen, timeout: float, log_path: str,
               poll: float = 0.01):
  """Polls ``predicate()`` until it returns a true value; fails if ``proc`` ends first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    if proc.poll() is not None:
      with open(log_path, encoding='utf-8', errors='replace') as f:
        raise AssertionError(f'the run ended (rc={proc.returncode}) before the awaited point; '
                             f'output:\n{f.read()}')
    time.sleep(poll)
  kill_group(proc)
  with open(log_path, encoding='utf-8', errors='replace') as f:
    raise AssertionError(f'the awaited point did not come within {timeout} s; output:\n'
                         f'{f.read()}')


def read_metrics(workdir: str) -> list[dict]:
  """The records of metrics.jsonl, as the job reads them (a line being written is skipped)."""
  from alexnet_jax import report  # pylint: disable=g-import-not-at-top  (not for the config)
  return report.read_metrics(workdir)


def checkpoint_steps(workdir: str) -> list[int]:
  from alexnet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  return checkpoint.saved_steps(workdir)


def restore_checkpoint(workdir: str, step: int):
  """(state as nested dicts of numpy arrays, meta) of a checkpoint, read without a target."""
  import jax  # pylint: disable=g-import-not-at-top  (not needed as a config file)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'checkpoints', str(step))
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(os.path.join(path, 'state')).item_metadata.tree
    # As numpy arrays: the checkpoint's 2-device shardings do not exist in this process.
    args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(os.path.join(path, 'state'),
                                 args=ocp.args.PyTreeRestore(restore_args=args))
  with open(os.path.join(path, 'meta', 'metadata'), encoding='utf-8') as f:
    meta = json.load(f)
  return state, meta


def leaves_with_paths(tree) -> list[tuple[str, object]]:
  import jax  # pylint: disable=g-import-not-at-top
  return [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


_SESSION = None


def _shared_dir(tmp_path_factory) -> str | None:
  """Under pytest-xdist, a directory all workers of this test session share; else None."""
  if not os.environ.get('PYTEST_XDIST_WORKER'):
    return None
  path = os.path.join(str(tmp_path_factory.getbasetemp().parent), 'main_job_shared')
  os.makedirs(path, exist_ok=True)
  return path


@contextlib.contextmanager
def _locked(path: str):
  """Holds an exclusive lock on ``path + '.lock'`` (one worker at a time)."""
  with open(path + '.lock', 'a', encoding='utf-8') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def session(tmp_path_factory) -> Session:
  """The test session's :class:`Session` (one image folder and compilation cache for all).

  Under pytest-xdist each worker has its own Session (its directories, its compilation cache)
  but all of them read one image folder.
  """
  global _SESSION  # pylint: disable=global-statement
  if _SESSION is None:
    folder, shared = None, _shared_dir(tmp_path_factory)
    if shared is not None:
      folder = os.path.join(shared, 'images')
      with _locked(folder):
        if not os.path.isdir(folder):
          make_image_folder(folder)
    _SESSION = Session(str(tmp_path_factory.mktemp('main_job')), folder)
  return _SESSION


@functools.lru_cache(maxsize=None)
def _run_once(base_id: int, name: str, flags: tuple[str, ...]) -> tuple[str, Result]:
  del base_id  # the cache key: one run per session
  s = _SESSION
  workdir = s.new_dir(name)
  result = s.run(s.command(workdir, *flags), timeout=420)
  assert result.returncode == 0, result
  return workdir, result


def reference_run(tmp_path_factory) -> tuple[str, Result]:
  """(workdir, result) of the uninterrupted tiny run; runs once per session. Read it only.

  Under pytest-xdist the first worker that asks runs it (the others wait for it) and each
  worker's compilation cache gets the programs it compiled.
  """
  s = session(tmp_path_factory)
  shared = _shared_dir(tmp_path_factory)
  if shared is None:
    return _run_once(id(s), 'reference', ())
  return _shared_reference_run(id(s), shared)


@functools.lru_cache(maxsize=None)
def _shared_reference_run(base_id: int, shared: str) -> tuple[str, Result]:
  del base_id  # the cache key: one run per session
  s = _SESSION
  record, cache_dir = os.path.join(shared, 'reference.json'), os.path.join(shared, 'jax_cache')
  with _locked(record):
    if not os.path.exists(record):
      workdir = os.path.join(shared, 'reference')
      result = s.run(s.command(workdir), timeout=420,
                     env=s.env(JAX_COMPILATION_CACHE_DIR=cache_dir))
      assert result.returncode == 0, result
      with open(record, 'w', encoding='utf-8') as f:
        json.dump({'workdir': workdir, **vars(result)}, f)
  with open(record, encoding='utf-8') as f:
    saved = json.load(f)
  # The run has ended: its cache entries are whole and never rewritten, so links are safe.
  os.makedirs(s.cache_dir, exist_ok=True)
  for name in os.listdir(cache_dir):
    if (os.path.isfile(os.path.join(cache_dir, name))
        and not os.path.exists(os.path.join(s.cache_dir, name))):
      os.link(os.path.join(cache_dir, name), os.path.join(s.cache_dir, name))
  return saved.pop('workdir'), Result(**saved)


def copy_workdir(source: str, destination: str) -> str:
  """A copy of a run's workdir to continue in; large checkpoint files are hard links.

  Orbax never rewrites a finished checkpoint's files (it writes new step directories and
  deletes whole old ones), so links are safe there; everything else is copied, because the
  job rewrites metrics, plots and config in the copy.
  """
  def copy(src, dst):
    if os.sep + 'checkpoints' + os.sep in src and os.path.getsize(src) > (1 << 20):
      os.link(src, dst)
    else:
      shutil.copy2(src, dst)
  shutil.copytree(source, destination, copy_function=copy)
  return destination
