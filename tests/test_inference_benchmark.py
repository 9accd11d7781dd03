"""experiments/benchmark.py --inference: the same weights in every framework, the logits check
before timing, the rows and the table, at batch 1 with one timed call per framework.

The timings are not tested (they depend on the machine). ONNX Runtime and PyTorch parts are
skipped where those libraries are missing.
"""
import importlib.util

import numpy as np
import pytest

from experiments.bench import inference
from experiments.bench import inference_weights
from experiments.bench import workers
from experiments.bench.configs import Config

BATCH = 1


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """Weights, ONNX graph and reference logits of the bvlc preset, made once for the module."""
  path = tmp_path_factory.mktemp('inference')
  inference_weights.prepare(str(path), 'bvlc', [BATCH],
                            with_twin=importlib.util.find_spec('torch') is not None)
  return str(path)


def _needs(kind: str) -> None:
  library = {'infer_torch': 'torch', 'infer_onnxruntime': 'onnxruntime'}.get(kind)
  if library:
    pytest.importorskip(library)


def _run(config: Config, workdir: str) -> dict:
  """One configuration in this process: setup (with its check), one timed step, its row."""
  worker = workers.LocalWorker(inference.make_runner(config, {'batch': BATCH,
                                                              'workdir': workdir}), warmup=0)
  info = worker.start()
  return inference.inference_row(config, BATCH, {**info, 'rss_start_mib': 0.0},
                                 [worker.step()], worker.finish())


@pytest.mark.parametrize('name', ['jax', 'onnxruntime', 'torch_eager'])
def test_every_framework_computes_the_reference_logits(name, workdir):
  config = inference.INFERENCE_CONFIGS[name]
  _needs(config.kind)
  row = _run(config, workdir)
  assert row['check_rel_err'] <= inference.CHECK_RTOL
  assert row['calls_per_step'] == inference.calls_per_step(BATCH) == 16
  assert row['images_per_s'] == pytest.approx(BATCH / row['median_s'])
  assert row['first_call_s'] > 0 and row['peak_rss_mib'] > 0


def test_reference_logits_are_not_degenerate(workdir):
  """The random weights give logits that spread (not a near-constant output to compare)."""
  reference = np.load(f'{workdir}/reference_b{BATCH}.npy')
  assert reference.shape == (BATCH, 1000)
  assert np.std(reference) > 0.1 * np.max(np.abs(reference)) > 0


def test_a_different_network_fails_the_check(workdir):
  """The paper's preset (other LRN constants) on the same weights is caught before timing."""
  config = Config('paper', 'infer_jax', 'paper LRN', model={'lrn_k': 2.0, 'lrn_alpha': 1e-4,
                                                            'lrn_groups': 2})
  with pytest.raises(ValueError, match='differ from the reference'):
    inference.make_runner(config, {'batch': BATCH, 'workdir': workdir}).setup()


def test_table_and_goal_lines():
  rows = []
  for name, kind, rate in (('jax', 'infer_jax', 50.0), ('ort', 'infer_onnxruntime', 40.0),
                           ('te', 'infer_torch', 60.0)):
    rows.append({'label': name, 'kind': kind, 'batch': 1, 'images_per_s': rate,
                 'median_s': 1 / rate, 'min_s': 1 / rate, 'max_s': 1 / rate,
                 'check_rel_err': 1e-6, 'compile_s': 1.0, 'first_call_s': 0.1,
                 'peak_rss_mib': 500.0})
  data = {'settings': {'preset': 'bvlc', 'batch_sizes': [1], 'timed_steps': 1,
                       'warmup_steps': 0, 'check_rtol': 1e-4, 'calls_per_step': {'1': 16}},
          'command': 'python experiments/benchmark.py --inference', 'date': 'now',
          'machine': {'cpu': 'x', 'cpu_count': 2, 'jax_version': '0'}, 'results': rows}
  table = inference.inference_markdown(data)
  assert '| images/s | batch 1 |' in table and '| jax | 50.0 |' in table
  (line,) = inference.goal_lines(data)
  assert '0.83x the fastest other (te, 60.0)' in line and 'behind' in line


def test_unknown_configuration_or_preset_is_a_user_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    inference.select_configs(['nope'], [], print)
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.startswith('error: unknown inference configuration')
  with pytest.raises(SystemExit) as exit_info:
    inference.check_preset('torchvision', with_twin=True)
  assert exit_info.value.code == 2 and 'twin' in capsys.readouterr().err
  inference.check_preset('torchvision', with_twin=False)  # ONNX Runtime and JAX only: fine
