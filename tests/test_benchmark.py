"""experiments/benchmark.py: its FLOP count, its outputs, and its --gpu logic, at toy sizes.

The timings themselves are not tested (they depend on the machine); what is tested is that a
run produces complete, self-describing results: every configuration, the raw step times, the
ceiling, the FLOP counts (analytic and XLA's, which must agree), the table and the README
section. The --gpu path runs on the CPU at batch 2 with a synthetic input pipeline.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax.ops import conv as conv_ops
from experiments.bench import configs
from experiments.bench import flops as flops_lib
from experiments.bench import gpu
from experiments.bench import model_options
from experiments.bench import profile_layers
from experiments.bench import report
from experiments.bench import steps
from experiments.bench import workers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'experiments', 'benchmark.py')


def _has_torch() -> bool:
  return importlib.util.find_spec('torch') is not None


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------
def _macs_from_the_model_table(num_classes=1000):
  """Multiply-adds per image, derived from alexnet_jax.model's layer table and 227 input."""
  size, channels, macs = 227, 3, {}
  for name, features, ksize, stride, pad, groups in model_lib.CONV_LAYERS:
    size = (size + 2 * pad - ksize) // stride + 1
    macs[name] = size * size * features * ksize * ksize * channels // groups
    channels = features
    if name in ('conv1', 'conv2', 'conv5'):
      size = (size - 3) // 2 + 1  # max-pool 3x3 / 2
  assert size == 6
  fan_in = size * size * channels
  for name, features in model_lib.FC_LAYERS + (('fc8', num_classes),):
    macs[name] = fan_in * features
    fan_in = features
  return macs


def test_analytic_flops_follow_the_layer_table():
  macs = _macs_from_the_model_table()
  flops = flops_lib.analytic_flops(1)
  assert set(flops['per_image_by_layer']) == set(macs)
  for name, m in macs.items():
    layer = flops['per_image_by_layer'][name]
    assert layer['forward'] == 2 * m
    assert layer['weight_grad'] == 2 * m
    assert layer['input_grad'] == (0 if name == 'conv1' else 2 * m)
  assert flops['forward_per_image'] == 2 * sum(macs.values())
  assert flops['step_per_image'] == 6 * sum(macs.values()) - 2 * macs['conv1']
  # The paper's network: about 0.72 G multiply-adds forward per image.
  assert 0.70e9 < sum(macs.values()) < 0.74e9
  assert flops_lib.analytic_flops(128)['step'] == 128 * flops['step_per_image']


# --------------------------------------------------------------------------------------------
# Configurations and reporting
# --------------------------------------------------------------------------------------------
def test_parse_config_presets_and_json():
  assert configs.parse_config('torch_compile').mode == 'compile'
  c = configs.parse_config('x={"base": "jax_fgc", "label": "mine", "model": {"lrn_impl": "matmul"},'
                         ' "xla_flags": "--xla_cpu_use_xnnpack=false"}')
  assert (c.name, c.kind, c.label) == ('x', 'jax', 'mine')
  assert c.model == {**configs.PRESETS['jax_fgc'].model, 'lrn_impl': 'matmul'}
  assert c.xla_flags == '--xla_cpu_use_xnnpack=false'
  with pytest.raises(SystemExit, match='Unknown configuration'):
    configs.parse_config('nope')


def test_configurations_name_the_experiments_formulations():
  """Options only the benchmark times are named like the model's own and reach the model as the
  experiments' functions; every name a configuration or profile variant uses is one of them."""
  import typing
  import jax
  import jax.numpy as jnp
  from experiments import lrn_formulations
  fgc = model_options.model_kwargs(configs.PRESETS['jax_fgc'].model)
  assert fgc['lrn_impl'] is lrn_formulations.window_sum_shifted_slices
  assert fgc['pool_impl'] == 'reduce_window' and fgc['conv_impl'] == 'feature_group_count'
  split = model_options.model_kwargs(configs.PRESETS['jax_split_rw'].model)
  assert split['pool_impl'] is model_options.max_pool_strided_slices
  assert split['lrn_impl'] == 'reduce_window'
  assert model_options.model_kwargs({'dtype': 'bfloat16'})['dtype'] == jnp.bfloat16
  names = {'lrn_impl': set(typing.get_args(model_lib.LrnImpl)),
           'pool_impl': set(typing.get_args(model_lib.PoolImpl)) | {'auto'}}
  for option, functions in model_options.experiment_impls().items():
    names[option] |= set(functions)
  named = [c.model for c in configs.PRESETS.values()] + [
      o for variants in profile_layers.PROFILE_VARIANTS.values() for _, _, o in variants]
  for options in named:
    for option in names:
      assert options.get(option, 'auto' if option == 'pool_impl' else 'reduce_window') in \
          names[option], options
  for kwargs in (fgc, split):  # The model builds with them.
    model = model_lib.AlexNet(num_classes=4, **kwargs)
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 227, 227, 3), jnp.float32))
    assert shapes['params']['fc8']['kernel'].shape == (4096, 4)


def test_worker_env_has_one_device_and_the_flags(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=4 --foo=1')
  env = workers.worker_env(configs.Config('a', 'jax', 'a', xla_flags='--bar=2'))
  assert env['XLA_FLAGS'].split() == ['--foo=1', '--xla_force_host_platform_device_count=1',
                                      '--bar=2']


def test_update_readme_replaces_only_its_section(tmp_path):
  readme = tmp_path / 'README.md'
  readme.write_text(f'head\n{report.README_START}\nold\n{report.README_END}\ntail\n')
  report.update_readme(str(readme), '| new |\n')
  assert readme.read_text() == f'head\n{report.README_START}\n| new |\n{report.README_END}\ntail\n'
  (tmp_path / 'plain.md').write_text('no markers')
  with pytest.raises(SystemExit, match='benchmark:start'):
    report.update_readme(str(tmp_path / 'plain.md'), 'x')


def test_without_torch_the_jax_side_still_runs(monkeypatch):
  monkeypatch.setattr(configs, 'torch_available', lambda: False)
  data = steps.run_benchmark([configs.PRESETS['matmul_jax'], configs.PRESETS['torch_eager']], [2],
                             steps=2, warmup=0, matmul_size=64, gap_s=0.0, log=lambda m: None)
  assert [r['config'] for r in data['results']] == ['matmul_jax']
  assert 'torch_eager' in data['notes'][0]
  result = data['results'][0]
  assert len(result['step_times_s']) == 2 and result['gflops'] > 0
  assert result['peak_rss_mib'] >= result['rss_start_mib'] > 0
  assert 'skipped torch_eager' in report.markdown_report(data)


def test_a_failing_worker_reports_its_error():
  worker = workers.SubprocessWorker(configs.Config('bad', 'nope', 'bad'), 2, 0, 64)
  with pytest.raises(RuntimeError, match='Unknown configuration kind'):
    worker.start()
  worker.kill()


def test_a_failed_worker_leaves_no_log_file():
  worker = workers.SubprocessWorker(configs.Config('bad', 'nope', 'bad'), 2, 0, 64)
  log_path = worker.log.name
  assert os.path.exists(log_path)
  with pytest.raises(RuntimeError, match='Unknown configuration kind'):
    worker.start()  # the error message is read from the log before it goes
  worker.kill()
  assert not os.path.exists(log_path)
  worker.kill()  # a second kill finds nothing left to remove


# --------------------------------------------------------------------------------------------
# A whole run, as the command line does it
# --------------------------------------------------------------------------------------------
def test_command_line_run_writes_complete_results(tmp_path):
  """At the smallest input the network takes (67 px, --image-size): the run's logic and the
  FLOP counts' agreement do not depend on the size, and compiling the 227-px step twice (the
  worker's and XLA's count) was most of this test's time."""
  size = 67
  configs = ['matmul_jax', 'jax_default'] + (['matmul_torch', 'torch_eager']
                                             if _has_torch() else [])
  readme = tmp_path / 'README.md'
  readme.write_text(f'# x\n{report.README_START}\n{report.README_END}\n')
  out_json, out_md = tmp_path / 'b.json', tmp_path / 'b.md'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
      [sys.executable, SCRIPT, '--batch-sizes', '2', '--steps', '1', '--warmup', '0',
       '--matmul-size', '64', '--gap', '0', '--image-size', str(size), '--configs', *configs,
       '--json', str(out_json),
       '--markdown', str(out_md), '--readme', str(readme)],
      capture_output=True, text=True, env=env, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = json.loads(out_json.read_text())
  assert {'command', 'date', 'machine', 'settings', 'flops', 'results'} <= set(data)
  assert data['machine']['cpu_count'] >= 1 and data['machine']['jax_version']
  assert [r['config'] for r in data['results']] == configs
  assert data['settings']['image_size'] == size
  analytic = flops_lib.analytic_flops(2, image_size=size)
  for r in data['results']:
    assert r['batch'] == 2 and len(r['step_times_s']) == 1
    assert r['peak_rss_mib'] > 0 and r['first_step_s'] > 0
    assert r['ceiling_gflops'] > 0
    if r['kind'].startswith('matmul'):
      assert r['flops'] == 2 * 64 ** 3
      continue
    assert r['analytic_flops'] == analytic['step']
    assert r['images_per_s'] == pytest.approx(2 / r['median_s'])
    assert r['fraction_of_ceiling'] == pytest.approx(r['gflops'] / r['ceiling_gflops'])
    assert np.isfinite(r['losses'][0])
    if r['kind'] == 'jax':
      assert r['compile_s'] > 0 and r['xla_flops_per_image'] > 0
      assert set(r['impls']) >= {'pool_impl', 'conv_impl', 'conv_weight_grad', 'conv1_impl'}
  # XLA's own count of the step agrees with the layer table's to within 10% (XLA skips the
  # products with padding; elementwise ops add a little).
  assert data['flops']['2']['xla_step_per_image'] == pytest.approx(analytic['step_per_image'],
                                                                   rel=0.1)
  table = out_md.read_text()
  assert table in readme.read_text()
  assert '| images/s | batch 2 |' in table
  for r in data['results']:
    if not r['kind'].startswith('matmul'):
      assert f'| {r["label"]} | 2 |' in table
  assert data['command'] in table
  assert proc.stdout.strip().endswith(table.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# --gpu: the same logic on the CPU at batch 2, with a synthetic input pipeline
# --------------------------------------------------------------------------------------------
def test_gpu_path_logic_on_cpu():
  """At the smallest input the network takes: the logic does not depend on the size, and a
  227-px step's compilation was most of this test's time."""
  size = 67
  rng = np.random.default_rng(0)

  def fake_pipeline(batch):
    def batches():
      while True:
        yield {'image': rng.normal(size=(batch, size, size, 3)).astype(np.float32),
               'label': rng.integers(0, 1000, batch).astype(np.int32)}
    return 1000, batches()

  # float32 defaults: the bf16 path only changes the model's dtype (tested in test_model.py).
  data = gpu.run_gpu([2], steps=2, warmup=0, matmul_size=64, model_options={}, chain=2,
                       e2e_steps=2, e2e_batch=2, batches_factory=fake_pipeline,
                       log=lambda m: None, image_size=size)
  assert data['ceiling_gflops'] > 0 and data['settings']['image_size'] == size
  (train,) = [r for r in data['results'] if r['kind'] == 'jax']
  assert train['batch'] == 2 and len(train['step_times_s']) == 2
  assert train['images_per_s'] == pytest.approx(2 / train['median_s'])
  flops = flops_lib.analytic_flops(2, image_size=size)['step']
  assert train['fraction_of_ceiling'] == pytest.approx(
      flops / train['median_s'] / 1e9 / data['ceiling_gflops'])
  e2e = data['end_to_end']
  assert e2e['batch'] == 2 and e2e['num_classes'] == 1000
  for key in ('pipeline_images_per_s', 'step_images_per_s', 'end_to_end_images_per_s'):
    assert e2e[key] > 0
  assert e2e['bound_by'] in ('input pipeline', 'train step')
  assert np.isfinite(e2e['final_loss'])
  table = gpu.gpu_markdown(data)
  assert '| 2 |' in table and 'bounded by the' in table


# --------------------------------------------------------------------------------------------
# Per-block profiles, the donation switch, the conv1 GEMM experiment
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('block,options,marker,present', [
    # XLA's own max-pool gradient is a select-and-scatter; the model's CPU default has none.
    ('pool2', {}, 'select_and_', False),
    ('pool2', {'pool_impl': 'reduce_window'}, 'select_and_', True),
    # conv1 direct is a stride-4 convolution; the default space-to-depth form has none.
    ('conv1', {}, 'window_strides=(4, 4)', False),
    ('conv1', {'conv1_impl': 'direct'}, 'window_strides=(4, 4)', True),
    # Narrow convolutions padded to a larger output (conv1's 3x3 blocks: 2 more on each side).
    ('conv1', {}, 'padding=((2, 2), (2, 2))', True),
    ('conv1', {'narrow_conv_impl': 'xla'}, 'padding=((2, 2), (2, 2))', False),
    ('norm1', {}, 'reduce_window_sum', True),
    ('conv4', {}, 'feature_group_count=2', False),
    ('conv4', {'conv_impl': 'feature_group_count'}, 'feature_group_count=2', True)])
def test_profile_blocks_default_to_the_models_implementations(block, options, marker, present):
  """A block with no options runs the model's defaults, options override them, and every form
  computes what XLA's own implementations compute."""
  import jax
  import jax.numpy as jnp
  _, fwd_bwd, args = profile_layers.jax_block(block, 2, options)
  assert (marker in str(jax.make_jaxpr(fwd_bwd)(*args))) is present
  _, ref_fwd_bwd, _ = profile_layers.jax_block(
      block, 2, {**model_lib.XLA_NATIVE_IMPLS, 'lrn_grad': 'autodiff'})
  got, want = fwd_bwd(*args), ref_fwd_bwd(*args)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-4 * float(jnp.abs(w).max()))


def test_no_donation_configuration_keeps_the_state():
  """The 'jax_no_donation' preset really measures a step that leaves its input state alive."""
  import jax
  import jax.numpy as jnp
  from alexnet_jax import optim
  from alexnet_jax import steps as steps_lib

  config = configs.parse_config('jax_no_donation')
  assert config.donate is False and configs.PRESETS['jax_default'].donate is True
  assert configs.parse_config('x={"base": "jax_default", "label": "x", "donate": false}').donate \
      is False
  model = model_lib.AlexNet(num_classes=4, dropout_rate=0.0)
  tx = optim.sgd_with_injected_lr(0.01)
  # Donation does not depend on the input size: the smallest the network takes (fc6 256 wide),
  # and one compiled init for both states (eager, it runs op by op).
  shape = (1, 67, 67, 3)
  batch = {'image': jnp.ones(shape), 'label': jnp.zeros((1,), jnp.int32)}
  new_state = steps_lib.jit_create_train_state(model, tx, shape)
  for donate in (False, True):
    state = new_state(jax.random.key(0))
    step, _ = steps_lib.make_single_device_steps(model, tx, donate_state=donate)
    step(state, batch)
    assert state.params['fc8']['kernel'].is_deleted() is donate


def test_conv1_gemm_forms_equal_the_convolution():
  spec = importlib.util.spec_from_file_location(
      'conv1_gemm', os.path.join(REPO, 'experiments', 'conv1_gemm.py'))
  conv1_gemm = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(conv1_gemm)
  rng = np.random.default_rng(0)
  x = rng.normal(0, 60, (2, 67, 67, 3)).astype(np.float32)
  kernel = rng.normal(0, 0.01, (11, 11, 3, 96)).astype(np.float32)
  want = np.asarray(conv_ops.space_to_depth_conv(x, kernel, 4))
  np.testing.assert_array_equal(conv1_gemm.im2col_gemm(x, kernel), want)
  np.testing.assert_allclose(conv1_gemm.per_tap_gemms(x, kernel), want, rtol=1e-5,
                             atol=1e-5 * np.abs(want).max())
