"""Multi-host: two processes on 127.0.0.1 train as one job, exactly like one process would.

Each job runs ``python -m alexnet_jax.main`` twice (process 0 and 1), joined by
``jax.distributed.initialize`` over loopback (gloo CPU collectives), with 2 fake CPU devices per
process and a (data=2, model=2) mesh: the paper's two towers inside each process, data
parallelism across the processes. The reference is this test process (4 fake devices, see
conftest.py) running the project's own sharded step on the same mesh shape, fed the global
batches the two processes assemble: process 0's part of batch t followed by process 1's part
(``make_array_from_process_local_data`` puts process p's rows at data-axis position p).

Who wrote which file: process 0 runs with umask 022 and process 1 with umask 027, so a file
process 1 created has mode 640 (a directory 750), which no process-0 file has.

Every wait is bounded; on any failure both processes' process groups are killed and the tails of
their output are shown.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time

import chex
import jax
import ml_collections
import numpy as np
import pytest

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import report
from alexnet_jax import input_pipeline as ip
from alexnet_jax import layout as layout_lib
from alexnet_jax import optim
from alexnet_jax import resume
from alexnet_jax import trainer
from alexnet_jax.configs import default as default_config

import tiny_config

pytestmark = pytest.mark.slow

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
FIRST_STEPS = 3      # the first job stops here (checkpoints at 2 and 3)
RESUMED_STEPS = 5    # the fresh job resumes from step 3 and stops here
HEARTBEAT_S = 10     # a dead peer fails the job this soon (JAX's default is 100 s)
JOB_TIMEOUT_S = 420  # one job, both processes (a loaded 2-core machine takes ~2 min)
# The 2-process run and the reference may differ only in the order of the cross-process
# gradient sums (gloo vs in-process). With 2 data shards a sum is one addition, so they come out
# identical here; the tolerance is float32 rounding, for reductions over more shards.
PARAM_ATOL = 1e-6
PARAM_RTOL = 1e-5

# The tiny config, shared by the processes (as --config flags) and the reference (in-process).
# crop 67 instead of 227: the same network and pipeline, a 20M-parameter model that compiles,
# steps and saves quickly (fc6 sees 1x1x256 features).
OVERRIDES = {
    'data.name': 'alexnet_jax_shapes/tiny',
    'data.crop_size': 67,
    'batch_size': 4,           # global: 2 per process, 1 per data shard
    'eval.batch_size': 4,
    'eval.max_batches': 1,
    'num_epochs': 1,
    'log_every_steps': 1,
    'checkpoint.every_steps': 2,
    'mesh.data': -1,
    'mesh.model': 2,
    'progress_bar': False,
}

# What process 0 alone prints or writes.
MAIN_ONLY_OUTPUT = ('Done:', 'Resuming from checkpoint', 'val error')
LOG_FILES = ('config.json', 'metrics.jsonl', 'plots/curves.png', 'plots/conv1_filters.png')
UMASKS = (0o022, 0o027)


def _is_process1_file(mode: int) -> bool:
  """Whether a file or directory was created under process 1's umask (027, see module doc)."""
  return (mode & 0o077) == (0o050 if stat.S_ISDIR(mode) else 0o040)


def _config(data_dir: str, max_steps: int) -> ml_collections.ConfigDict:
  c = default_config.get_config()
  for dotted, value in {**OVERRIDES, 'data.data_dir': data_dir, 'max_steps': max_steps}.items():
    *parents, leaf = dotted.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _config_flags(data_dir: str, max_steps: int, extra: dict | None = None) -> list[str]:
  values = {**OVERRIDES, 'data.data_dir': data_dir, 'max_steps': max_steps, **(extra or {})}
  return [f'--config.{k}={v}' for k, v in values.items()]


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# One JAX compilation cache for this module's jobs (set by the autouse fixture below): every job
# runs the same tiny config, so each job after the first reads its programs back instead of
# compiling them again. Only here: a test process that jits closures over a whole network's
# weights would pay for hashing and writing those constants and reuse nothing.
_COMPILATION_CACHE = {}


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  _COMPILATION_CACHE.update(
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp('jax_cache')),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  yield
  _COMPILATION_CACHE.clear()


def _child_env(devices: int = DEVICES_PER_PROCESS) -> dict[str, str]:
  # Proxy variables can route gRPC's loopback connections through a proxy (JAX warns: hangs).
  env = {k: v for k, v in os.environ.items() if not k.lower().endswith('_proxy')}
  env.update(XLA_FLAGS=tiny_config.child_xla_flags(devices),
             JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2',
             **_COMPILATION_CACHE)
  return env


def _tail(path: str, chars: int = 3000) -> str:
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      text = f.read()
  except OSError:
    return '<no output>'
  # Gloo's connection chatter carries no information.
  text = '\n'.join(l for l in text.splitlines() if not l.startswith('[Gloo]'))
  return text[-chars:]


class Job:
  """``NUM_PROCESSES`` processes of ``python -m alexnet_jax.main`` joined over loopback."""

  def __init__(self, name: str, logdir, workdir, data_dir: str, max_steps: int,
               extra_overrides: dict | None = None,
               devices_per_process: int = DEVICES_PER_PROCESS, slurm: bool = False):
    """``slurm``: no coordinator flags and no ``--distributed``, in the environment of an
    ``srun`` step of 2 tasks on 2 nodes (what JAX's SLURM detection reads), on loopback: the
    job must notice the launcher by itself."""
    self.name = name
    port = _free_port()
    address = f'127.0.0.1:{port}'
    common = [sys.executable, '-m', 'alexnet_jax.main', f'--workdir={workdir}',
              f'--heartbeat_timeout_seconds={HEARTBEAT_S}',
              *_config_flags(data_dir, max_steps, extra_overrides)]
    if not slurm:
      common += [f'--coordinator_address={address}', f'--coordinator_bind_address={address}',
                 f'--num_processes={NUM_PROCESSES}']
    self.procs, self.outs, self.errs = [], [], []
    try:
      for p in range(NUM_PROCESSES):
        env = _child_env(devices_per_process)
        if slurm:
          env.update(SLURM_JOB_ID='4242', SLURM_STEP_ID='0', SLURM_STEP_NODELIST='127.0.0.1',
                     SLURM_STEP_NUM_NODES=str(NUM_PROCESSES), SLURM_NTASKS=str(NUM_PROCESSES),
                     SLURM_PROCID=str(p), SLURM_LOCALID='0', JAX_COORDINATOR_PORT=str(port),
                     JAX_COORDINATOR_BIND_ADDRESS=address)
        argv = common if slurm else common + [f'--process_id={p}']
        out = os.path.join(logdir, f'{name}.{p}.out')
        err = os.path.join(logdir, f'{name}.{p}.err')
        with open(out, 'wb') as fo, open(err, 'wb') as fe:
          # A new session per process: killpg ends it and anything it started.
          self.procs.append(subprocess.Popen(
              argv, cwd=str(logdir), env=env, stdout=fo, stderr=fe,
              stdin=subprocess.DEVNULL, start_new_session=True, umask=UMASKS[p]))
        self.outs.append(out)
        self.errs.append(err)
    except BaseException:
      self.kill()
      raise

  def kill(self, process: int | None = None) -> None:
    for p, proc in enumerate(self.procs):
      if process is not None and p != process:
        continue
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        pass

  def report(self) -> str:
    lines = []
    for p, proc in enumerate(self.procs):
      lines.append(f'--- {self.name} process {p} (exit {proc.poll()}) stdout:\n'
                   f'{_tail(self.outs[p], 1500)}\n--- stderr:\n{_tail(self.errs[p])}')
    return '\n'.join(lines)

  def wait(self, timeout: float) -> list[int]:
    """Exit codes once every process ended; kills them all and fails on timeout.

    When one process fails, the others get the heartbeat timeout (and some slack) to notice.
    """
    deadline = time.monotonic() + timeout
    while True:
      codes = [proc.poll() for proc in self.procs]
      if all(c is not None for c in codes):
        return codes
      if any(c not in (None, 0) for c in codes):
        deadline = min(deadline, time.monotonic() + HEARTBEAT_S + 60)
      if time.monotonic() > deadline:
        self.kill()
        pytest.fail(f'{self.name}: not finished in time (exit codes {codes}); killed.\n'
                    + self.report())
      time.sleep(0.25)

  def run_to_end(self, timeout: float = JOB_TIMEOUT_S) -> None:
    try:
      codes = self.wait(timeout)
    finally:
      self.kill()
    if codes != [0] * NUM_PROCESSES:
      pytest.fail(f'{self.name}: exit codes {codes}.\n' + self.report())

  def stdout(self, process: int) -> str:
    with open(self.outs[process], encoding='utf-8', errors='replace') as f:
      return f.read()


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _max_abs_diff(a, b) -> float:
  diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(x - y))), a, b)
  return max(jax.tree_util.tree_leaves(diffs))


def _assert_trees_close(actual, expected, what: str) -> None:
  chex.assert_trees_all_equal_structs(actual, expected)
  jax.tree_util.tree_map_with_path(
      lambda path, x, y: np.testing.assert_allclose(
          x, y, rtol=PARAM_RTOL, atol=PARAM_ATOL, err_msg=f'{what} {jax.tree_util.keystr(path)}'),
      actual, expected)


def _file_modes(workdir) -> dict[str, int]:
  modes = {}
  for root, dirs, files in os.walk(workdir):
    for name in dirs + files:
      path = os.path.join(root, name)
      modes[os.path.relpath(path, workdir)] = os.lstat(path).st_mode
  return modes


def _restore(setup: trainer.Setup, workdir, step: int):
  ckpts = checkpoint_lib.Checkpoints(str(workdir), async_save=False)
  try:
    steps = ckpts.all_steps()
    target = resume.abstract_sharded(setup)
    state, meta = ckpts.restore(step, target)
    return steps, _host(state), meta
  finally:
    ckpts.close()


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  ip.get_dataset_info(_config(path, 1).data)  # prepares the tiny dataset once, before the jobs
  return path


@pytest.fixture(scope='module')
def setup(data_dir):
  """The single-process setup on this process's 4 devices: the same (2, 2) mesh."""
  s = trainer.setup(_config(data_dir, RESUMED_STEPS))
  assert dict(s.mesh.shape) == {'data': 2, 'model': 2}
  return s


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_dir, setup):
  """A 2-process job to FIRST_STEPS, then a fresh 2-process job to RESUMED_STEPS (same workdir)."""
  logdir = tmp_path_factory.mktemp('multihost_logs')
  workdir = tmp_path_factory.mktemp('multihost_run')  # exists, so neither process creates it
  first = Job('first', logdir, workdir, data_dir, FIRST_STEPS)
  first.run_to_end()
  after_first = {'modes': _file_modes(workdir),
                 'restored': _restore(setup, workdir, FIRST_STEPS)}
  resumed = Job('resumed', logdir, workdir, data_dir, RESUMED_STEPS)
  resumed.run_to_end()
  return {'workdir': workdir, 'first': first, 'resumed': resumed, 'after_first': after_first,
          'restored': _restore(setup, workdir, RESUMED_STEPS), 'modes': _file_modes(workdir)}


def _global_batches(config, num_steps: int, order=(0, 1)):
  """Global batch t as one process reads it (the data order does not depend on the process
  count); ``order=(1, 0)`` swaps the halves the two processes feed."""
  batches = ip.train_batches(config.data, global_batch_size=config.batch_size, seed=config.seed,
                             epoch=0, process_index=0, process_count=1)
  half = config.batch_size // NUM_PROCESSES
  for _ in range(num_steps):
    batch = next(batches)
    yield {k: np.concatenate([v[p * half:(p + 1) * half] for p in order])
           for k, v in batch.items()}


@pytest.fixture(scope='module')
def initial_state(setup):
  """The trainer's initial state (with the policy's first rate), on the host."""
  config = setup.config
  state = resume.initial_state(setup)
  policy = optim.make_lr_policy(config.optim)
  lr = policy.learning_rate(policy.init(config.optim.learning_rate))
  return _host(state.replace(opt_state=optim.set_learning_rate(state.opt_state, lr)))


def _reference_states(s: trainer.Setup, initial, snapshot_steps,
                      order=(0, 1)) -> dict[int, object]:
  """The project's sharded train step, single-process, on the 2-process job's global batches."""
  config = s.config
  state = layout_lib.place_state(initial, s.steps)
  snapshots = {}
  for t, batch in enumerate(_global_batches(config, max(snapshot_steps), order), start=1):
    state, _ = s.steps.train_step(state, layout_lib.place_batch(batch, s.steps))
    if t in snapshot_steps:
      snapshots[t] = _host(state)
  return snapshots


@pytest.fixture(scope='module')
def reference(setup, initial_state, runs):  # after the jobs: the CPUs are theirs meanwhile
  del runs
  return _reference_states(setup, initial_state, (FIRST_STEPS, RESUMED_STEPS))


def _check_equal_to_reference(restored, expected, step: int) -> float:
  assert int(restored.step) == int(expected.step) == step
  np.testing.assert_array_equal(restored.rng, expected.rng)
  _assert_trees_close(restored.params, expected.params, f'params at step {step}')
  _assert_trees_close(restored.opt_state, expected.opt_state, f'optimizer state at step {step}')
  diff = _max_abs_diff(restored.params, expected.params)
  print(f'step {step}: max |2-process - reference| over the parameters = {diff:.3g}')
  return diff


@pytest.mark.timeout(1500)
def test_two_processes_equal_one_process_on_the_same_global_batches(runs, reference):
  steps, restored, meta = runs['after_first']['restored']
  assert steps == [2, FIRST_STEPS]
  assert meta['epoch'] == 0 and meta['step_in_epoch'] == FIRST_STEPS
  _check_equal_to_reference(restored, reference[FIRST_STEPS], FIRST_STEPS)


@pytest.mark.timeout(1500)
def test_fresh_job_resumes_from_the_checkpoint(runs, reference):
  out = runs['resumed'].stdout(0)
  assert f'Resuming from checkpoint at step {FIRST_STEPS} ' in out, runs['resumed'].report()
  assert f'Done: {RESUMED_STEPS} steps.' in out, runs['resumed'].report()
  steps, restored, meta = runs['restored']
  assert steps[-1] == RESUMED_STEPS
  assert meta['step_in_epoch'] == RESUMED_STEPS
  _check_equal_to_reference(restored, reference[RESUMED_STEPS], RESUMED_STEPS)
  # metrics.jsonl: one train record per step across both jobs, an eval at the end of each job.
  records = [json.loads(l) for l in (runs['workdir'] / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if r['event'] == 'train'] == list(range(1, RESUMED_STEPS + 1))
  assert [r['step'] for r in records if r['event'] == 'eval'] == [FIRST_STEPS, RESUMED_STEPS]


@pytest.fixture(scope='module')
def one_process_run(tmp_path_factory, data_dir, setup, runs, reference):
  """The same job as one process with all 4 devices, uninterrupted to RESUMED_STEPS.

  The main job's training loop run in this process (its 4 devices, the same config): it takes
  the module's ``setup``, whose train step the reference has compiled already, instead of a
  process that would import everything and compile the same step again. The command line
  itself is what the 2-process jobs run.
  """
  del runs, reference  # after the 2-process jobs: the CPUs are theirs meanwhile
  workdir = str(tmp_path_factory.mktemp('one_process_run'))
  config = _config(data_dir, RESUMED_STEPS)
  assert config.to_json_best_effort(sort_keys=True) == setup.config.to_json_best_effort(
      sort_keys=True)
  with pytest.MonkeyPatch.context() as m:
    m.setattr(trainer, 'setup', lambda c: setup)
    trainer.train_and_evaluate(config, workdir)
  return _restore(setup, workdir, RESUMED_STEPS)


@pytest.mark.timeout(1500)
def test_one_process_and_two_processes_with_a_resume_end_at_the_same_parameters(
    runs, one_process_run):
  """Through the main job: the data order and every crop are the same on 1 and 2 processes."""
  _, two, _ = runs['restored']
  _, one, meta = one_process_run
  assert meta['step_in_epoch'] == RESUMED_STEPS
  diff = _check_equal_to_reference(two, one, RESUMED_STEPS)
  norm = max(float(np.max(np.abs(x))) for x in jax.tree_util.tree_leaves(one.params))
  print(f'1 process vs 2 processes: max |diff| {diff:.3g} (largest parameter {norm:.3g})')


@pytest.mark.timeout(1500)
def test_swapped_process_parts_would_be_detected(setup, initial_state, runs):
  """The comparison can fail: the same batches with the processes' parts swapped differ."""
  _, restored, _ = runs['after_first']['restored']
  swapped = _reference_states(setup, initial_state, (FIRST_STEPS,), order=(1, 0))[FIRST_STEPS]
  diff = _max_abs_diff(restored.params, swapped.params)
  print(f'step {FIRST_STEPS}: max |2-process - swapped-order reference| = {diff:.3g}')
  assert diff > 100 * PARAM_ATOL, diff


@pytest.mark.timeout(1500)
def test_only_process_zero_writes_logs_and_both_save_checkpoints(runs):
  for job in ('first', 'resumed'):
    out1 = runs[job].stdout(1)
    for text in MAIN_ONLY_OUTPUT:
      assert text not in out1, f'process 1 printed {text!r}:\n{out1}'
    assert 'Done:' in runs[job].stdout(0)
  for when in ('after_first', None):
    modes = runs['after_first']['modes'] if when else runs['modes']
    for name in LOG_FILES:
      assert name in modes, f'{name} missing ({when or "after the resumed job"})'
    by_process1 = sorted(p for p, m in modes.items() if _is_process1_file(m))
    outside = [p for p in by_process1 if not p.startswith(checkpoint_lib.CHECKPOINT_DIR + os.sep)]
    assert not outside, f'process 1 wrote {outside}'
    # Orbax: process 1 writes its own part of every saved state.
    saved = sorted({p.split(os.sep)[1] for p in by_process1})
    expected = ['2', '3'] if when else [str(s) for s in range(3, RESUMED_STEPS + 1)]
    assert saved == expected, by_process1


@pytest.mark.timeout(600)
def test_slurm_job_joins_and_a_dead_peer_fails_it_within_the_heartbeat_timeout(
    tmp_path, data_dir):
  """Under (simulated) srun, with no flags, JAX's SLURM detection joins the two processes.

  Killing process 1 then ends process 0 within the heartbeat timeout. Had the processes not
  joined, process 0 would train on alone; had --heartbeat_timeout_seconds not reached
  jax.distributed.initialize, it would take JAX's default 100 s.
  """
  workdir = tmp_path / 'run'
  workdir.mkdir()
  job = Job('dead_peer', tmp_path, workdir, data_dir, max_steps=1000, slurm=True)
  try:
    # Process 0 writes config.json after jax.distributed.initialize returned and after the
    # (2 x 2, both processes') mesh was built, before anything compiles: process 1 then dies
    # silently and only the missing heartbeats can tell process 0.
    written = workdir / checkpoint_lib.CONFIG_FILE
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not written.exists():
      codes = [p.poll() for p in job.procs]
      if any(c is not None for c in codes) or time.monotonic() > deadline:
        pytest.fail(f'the job did not start (exit codes {codes}).\n' + job.report())
      time.sleep(0.1)
    job.kill(process=1)
    killed = time.monotonic()
    try:
      code = job.procs[0].wait(timeout=HEARTBEAT_S + 80)
    except subprocess.TimeoutExpired:
      pytest.fail('process 0 kept running after its peer died.\n' + job.report())
    elapsed = time.monotonic() - killed
  finally:
    job.kill()
  assert code != 0, job.report()
  # The wait above (at most HEARTBEAT_S + 80 = 90 s, under JAX's default heartbeat of 100 s) is
  # what fails when the flag did not reach JAX; the time itself is a report, not a limit: on a
  # loaded 2-core machine process 0 may take longer than the heartbeat to notice and exit.
  print(f'process 0 exited {elapsed:.1f} s after its peer was killed (exit code {code})')


@pytest.mark.timeout(300)
def test_model_axis_across_processes_is_refused(tmp_path, data_dir):
  """Towers with one device per process: both processes would hold the whole batch."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  job = Job('model_across_processes', tmp_path, workdir, data_dir, max_steps=1,
            devices_per_process=1)
  try:
    codes = job.wait(JOB_TIMEOUT_S)
  finally:
    job.kill()
  assert codes == [2] * NUM_PROCESSES, job.report()
  for p in range(NUM_PROCESSES):
    assert 'does not split the batch over the 2 processes' in _tail(job.errs[p]), job.report()
  assert not (workdir / checkpoint_lib.CHECKPOINT_DIR).exists()


def test_partial_coordinator_flags_are_refused(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', f'--workdir={tmp_path}', '--num_processes=2'],
      env=_child_env(), capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
      check=False)
  assert proc.returncode == 2, proc.stderr
  assert 'Pass all three of --coordinator_address, --num_processes' in proc.stderr


@pytest.mark.timeout(600)
def test_sigterm_to_one_process_stops_every_process_at_one_saved_step(tmp_path, data_dir):
  """A preemption that reaches only process 0: both processes agree on a step, save there
  together and exit 0. (Stopping alone would leave process 1 waiting in a collective.)"""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  job = Job('sigterm_one', tmp_path, workdir, data_dir, max_steps=1000)
  try:
    metrics = workdir / report.METRICS_FILE
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (metrics.exists() and '"train"' in metrics.read_text()):
      if any(p.poll() is not None for p in job.procs) or time.monotonic() > deadline:
        pytest.fail('the job did not start training.\n' + job.report())
      time.sleep(0.2)
    job.procs[0].send_signal(signal.SIGTERM)
    codes = job.wait(timeout=HEARTBEAT_S + 120)
  finally:
    job.kill()
  assert codes == [0, 0], job.report()
  out0 = open(job.outs[0], encoding='utf-8').read()
  stopped = re.search(r'Stopped by SIGTERM: saved a checkpoint at step (\d+)', out0)
  assert stopped, job.report()
  step = int(stopped.group(1))
  assert step in checkpoint_lib.Checkpoints(str(workdir), keep=3, async_save=False).all_steps()
  assert step < 1000
