"""``--inference``: forward-only fp32 inference of a preset, alexnet_jax against ONNX Runtime and
PyTorch (eager and ``torch.compile``), each in its own worker process, in alternation.

Every framework runs the same random weights (written once by a JAX process: ``prepare``),
ONNX Runtime the graph ``alexnet_jax.weights.export_onnx`` writes, PyTorch the twin
(``torch_twin.AlexNetTwin`` with the preset's LRN constants, grouped convs, norm before or after
pool as the preset says). Before timing, each worker checks its logits on the timed batch size
against the XLA-native JAX reference (max abs difference within 1e-4 of the largest logit);
a worker that disagrees stops the run. One timed "step" is ``calls`` forward passes (more at
small batches, so that one step is long enough to time); images/s counts every call.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from experiments.bench import configs as configs_lib
from experiments.bench import report
from experiments.bench import steps as steps_lib
from experiments.bench import workers as workers_lib
from experiments.bench.configs import Config

CHECK_RTOL = 1e-4
README_START = '<!-- inference:start -->'
README_END = '<!-- inference:end -->'
DEFAULT_JSON = os.path.join(workers_lib.REPO, 'experiments', 'results', 'inference.json')
# PyTorch's allocator returns and re-maps its big buffers on every call without these (glibc:
# no mmap for large blocks, never trim the heap): the same settings for eager and compile.
TORCH_MALLOC_ENV = {'MALLOC_MMAP_MAX_': '0', 'MALLOC_TRIM_THRESHOLD_': '1099511627776'}
_CORES = os.cpu_count() or 1

INFERENCE_CONFIGS: dict[str, Config] = {c.name: c for c in (
    Config('jax', 'infer_jax', 'alexnet_jax (jit, model defaults)'),
    # ONNX Runtime's recommended CPU settings, then its defaults, then without spin-waiting:
    # the table keeps every one, the summary the best.
    Config('onnxruntime', 'infer_onnxruntime',
           f'ONNX Runtime ({_CORES} intra-op threads, sequential, all graph optimizations)',
           model={'intra_op_num_threads': _CORES, 'sequential': True, 'optimization': 'all'}),
    Config('onnxruntime_defaults', 'infer_onnxruntime', 'ONNX Runtime (its default settings)',
           model={}),
    Config('onnxruntime_no_spin', 'infer_onnxruntime',
           f'ONNX Runtime ({_CORES} intra-op threads, sequential, all, no spinning)',
           model={'intra_op_num_threads': _CORES, 'sequential': True, 'optimization': 'all',
                  'allow_spinning': False}),
    Config('torch_eager', 'infer_torch', 'PyTorch eager', mode='eager', env=TORCH_MALLOC_ENV),
    Config('torch_compile', 'infer_torch', 'PyTorch torch.compile', mode='compile',
           env=TORCH_MALLOC_ENV),
)}


def calls_per_step(batch: int) -> int:
  return max(1, 16 // batch)


def check_images(batch: int, size: int) -> np.ndarray:
  """The check and timing input of a batch size: pixel-scale noise, NHWC float32."""
  rng = np.random.default_rng(1000 + batch)
  return rng.normal(0.0, 60.0, (batch, size, size, 3)).astype(np.float32)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
  """Max abs difference over the largest magnitude of ``want``."""
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def checked(name: str, got: np.ndarray, workdir: str, batch: int) -> float:
  """The relative error of ``got`` against the reference logits; raises when over CHECK_RTOL."""
  want = np.load(os.path.join(workdir, f'reference_b{batch}.npy'))
  if got.shape != want.shape:
    raise ValueError(f'{name}: logits of shape {got.shape}, the reference has {want.shape}.')
  err = relative_error(got, want)
  if not err <= CHECK_RTOL:
    raise ValueError(f'{name}: logits differ from the reference by {err:.2e} (relative), more '
                     f'than {CHECK_RTOL}: not the same network or weights.')
  return err


def make_runner(config: Config, spec: dict):
  """The inference runner of ``config`` (kinds 'infer_jax', 'infer_onnxruntime', 'infer_torch')."""
  from experiments.bench import inference_runners  # pylint: disable=g-import-not-at-top
  cls = {'infer_jax': inference_runners.JaxInferRunner,
         'infer_onnxruntime': inference_runners.OrtInferRunner,
         'infer_torch': inference_runners.TorchInferRunner}.get(config.kind)
  if cls is None:
    raise ValueError(f'Unknown configuration kind {config.kind!r}.')
  return cls(config, spec['batch'], spec['workdir'])


def prepare_subprocess(workdir: str, preset: str, batch_sizes, with_twin: bool) -> None:
  """``inference_weights.prepare`` in a fresh one-device JAX process (the parent runs none)."""
  spec = {'workdir': workdir, 'preset': preset, 'batch_sizes': list(batch_sizes),
          'with_twin': with_twin}
  proc = subprocess.run([sys.executable, workers_lib.SCRIPT, '--inference-prepare',
                         json.dumps(spec)], capture_output=True, text=True, check=False,
                        env=workers_lib.worker_env(Config('prepare', 'jax', 'prepare')))
  if proc.returncode:
    raise RuntimeError(f'Preparing the inference weights failed:\n{proc.stderr[-3000:]}')


def prepare_main(spec_json: str) -> None:
  from experiments.bench import inference_weights  # pylint: disable=g-import-not-at-top
  spec = json.loads(spec_json)
  inference_weights.prepare(spec['workdir'], spec['preset'], spec['batch_sizes'],
                            with_twin=spec['with_twin'])


def select_configs(names, notes: list[str], log) -> list[Config]:
  """The named configurations (all by default), less those whose library is not installed."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  unknown = [n for n in names if n not in INFERENCE_CONFIGS]
  if unknown:
    configs_lib.user_error(f'unknown inference configuration(s) {unknown}: use '
                           f'{", ".join(INFERENCE_CONFIGS)}.')
  configs = [INFERENCE_CONFIGS[n] for n in names]
  library = {'infer_torch': 'torch', 'infer_onnxruntime': 'onnxruntime'}
  missing = {c.name: library[c.kind] for c in configs
             if c.kind in library and importlib.util.find_spec(library[c.kind]) is None}
  if missing:
    notes.append(f'not installed: {", ".join(sorted(set(missing.values())))}; skipped '
                 f'{", ".join(missing)}.')
    log('NOTE: ' + notes[-1])
  return [c for c in configs if c.name not in missing]


def check_preset(preset: str, with_twin: bool) -> None:
  """A user error, before any work, for an unknown preset or one the PyTorch twin lacks."""
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  if preset not in model_lib.PRESETS:
    configs_lib.user_error(f'unknown preset {preset!r}: use one of '
                           f'{", ".join(model_lib.PRESETS)}.')
  if with_twin and {'conv_layers', 'avg_pool_size', 'dropout_before_fc'} & set(
      model_lib.PRESETS[preset]):
    configs_lib.user_error(f'the PyTorch twin has the paper\'s layer table only, not preset '
                           f'{preset!r}: pick paper, bvlc or caffenet, or leave PyTorch out '
                           '(--configs jax onnxruntime ...).')


def inference_row(config: Config, batch: int, info: dict, timed: list[dict], end: dict) -> dict:
  row = steps_lib.timing_row(config, batch, info, timed, end)
  row['images_per_s'] = batch / row['median_s']
  return row


def run_inference(configs, preset: str, batch_sizes, steps: int, warmup: int, gap_s: float,
                  log=print, notes=None) -> dict:
  """Every configuration at every batch size, alternated; the results as one JSON-able dict."""
  results = []
  meta = steps_lib.machine_info(('jax', 'jaxlib', 'flax', 'torch', 'onnxruntime'))
  with tempfile.TemporaryDirectory(prefix='alexnet_inference_') as workdir:
    log(f'preparing weights, the ONNX graph and reference logits of preset {preset!r}')
    prepare_subprocess(workdir, preset, batch_sizes,
                       with_twin=any(c.kind == 'infer_torch' for c in configs))
    for batch in batch_sizes:
      infos, timed, ends = steps_lib.run_workers(configs, batch, steps, warmup, 0, gap_s, log,
                                                 extra={'workdir': workdir})
      results += [inference_row(c, batch, infos[c.name], timed[c.name], ends[c.name])
                  for c in configs]
  meta['loadavg_end'] = os.getloadavg()
  return {'benchmark': f'forward-only fp32 inference, preset {preset!r}',
          'date': datetime.datetime.now().isoformat(timespec='seconds'),
          'command': steps_lib.command_line(), 'machine': meta,
          'settings': {'preset': preset, 'batch_sizes': list(batch_sizes), 'timed_steps': steps,
                       'warmup_steps': warmup, 'gap_s': gap_s, 'dtype': 'float32',
                       'check_rtol': CHECK_RTOL,
                       'calls_per_step': {str(b): calls_per_step(b) for b in batch_sizes}},
          'notes': list(notes or []), 'results': results}


def goal_lines(data: dict) -> list[str]:
  """Per batch size: alexnet_jax against the fastest other configuration."""
  lines = []
  for batch in data['settings']['batch_sizes']:
    rows = [r for r in data['results'] if r['batch'] == batch]
    ours = [r for r in rows if r['kind'] == 'infer_jax']
    others = [r for r in rows if r['kind'] != 'infer_jax']
    if not ours or not others:
      continue
    best = max(others, key=lambda r: r['images_per_s'])
    ratio = ours[0]['images_per_s'] / best['images_per_s']
    verdict = 'ahead of or level with' if ratio >= 1.0 else 'behind'
    lines.append(f'- batch {batch}: alexnet_jax {ours[0]["images_per_s"]:.1f} images/s, '
                 f'{ratio:.2f}x the fastest other ({best["label"]}, '
                 f'{best["images_per_s"]:.1f}): {verdict} it.')
  return lines


def _detail_table(rows: list[dict]) -> list[str]:
  lines = ['| configuration | batch | images/s | ms per batch median (min-max) | check rel. err '
           '| build s | first call s | peak RSS MiB |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f'| {r["label"]} | {r["batch"]} | {r["images_per_s"]:.1f} | '
        f'{r["median_s"] * 1e3:.1f} ({r["min_s"] * 1e3:.1f}-{r["max_s"] * 1e3:.1f}) | '
        f'{r["check_rel_err"]:.1e} | {report.fmt(r.get("compile_s"), ".1f")} | '
        f'{r["first_call_s"]:.2f} | {r["peak_rss_mib"]:.0f} |')
  return lines


def inference_markdown(data: dict) -> str:
  s = data['settings']
  calls = ', '.join(f'{c} call(s) at batch {b}' for b, c in s['calls_per_step'].items())
  lines = [f'Forward-only inference, fp32, preset `{s["preset"]}`, the same random weights in '
           f'every framework (logits checked against XLA\'s reference within {s["check_rtol"]} '
           f'before timing); each configuration in its own process, alternated; median of '
           f'{s["timed_steps"]} timed steps after {s["warmup_steps"]} warm-up steps, a step '
           f'being {calls}.',
           '', f'Command: `{data["command"]}` ({data["date"]})', '',
           f'Machine: {report.machine_line(data["machine"])}.', '']
  lines += report.rate_table(data['results'], s['batch_sizes']) + ['']
  lines += goal_lines(data) + [''] + _detail_table(data['results'])
  lines += ['', 'build s: jit compilation (JAX), session creation with its graph optimizations '
            '(ONNX Runtime), model construction (PyTorch; torch.compile compiles in the first '
            'call).']
  for note in data.get('notes', []):
    lines += ['', f'Note: {note}']
  return '\n'.join(lines) + '\n'


def main(args) -> dict:
  """``--inference``: the run, its table on stdout, JSON, ``--markdown`` and ``--readme``."""
  log = lambda m: print(m, file=sys.stderr, flush=True)
  names = (list(INFERENCE_CONFIGS) if list(args.configs) == list(configs_lib.DEFAULT_CONFIGS)
           else args.configs)
  notes = []
  configs = select_configs(names, notes, log)
  check_preset(args.preset, with_twin=any(c.kind == 'infer_torch' for c in configs))
  report.check_readme(args.readme, README_START, README_END)
  data = run_inference(configs, args.preset, args.batch_sizes or [1, 64], args.steps,
                       args.warmup, args.gap, log, notes)
  table = inference_markdown(data)
  print(table)
  json_path = DEFAULT_JSON if args.json == report.DEFAULT_JSON else args.json
  report.write_outputs(data, table, json_path, args.markdown)
  if args.readme:
    report.update_readme(args.readme, table, README_START, README_END)
  return data
