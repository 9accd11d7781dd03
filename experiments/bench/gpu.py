"""``--gpu``: one GPU, bf16 compute with fp32 parameters, batch 128 to 1024, and the real input
pipeline end to end (JAX only, in this process)."""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from experiments.bench import flops as flops_lib
from experiments.bench import report
from experiments.bench import steps as steps_lib
from experiments.bench import workers as workers_lib
from experiments.bench.configs import Config
from experiments.bench.runners import JaxTrainRunner
from experiments.bench.runners import MatmulRunner

# XLA:GPU's own implementations (cuDNN grouped convolutions, select-and-scatter pooling): the
# CPU-tuned model defaults work around XLA:CPU slow paths that a GPU does not have.
GPU_MODEL_OPTIONS = {'dtype': 'bfloat16', 'conv_impl': 'feature_group_count',
                     'pool_impl': 'reduce_window', 'conv_weight_grad': 'xla',
                     'conv1_impl': 'direct', 'lrn_grad': 'autodiff'}


def embedded_batches(batch: int, data_dir: str | None, tiny: bool, crop_size: int | None = None):
  """(num_classes, an endless iterator of host batches) from the project's input pipeline;
  crops of ``crop_size`` (default: the data config's)."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = input_pipeline.default_data_config()
  config.data_dir = data_dir
  if crop_size is not None:
    config.crop_size = crop_size
  if tiny:
    config.name = 'alexnet_jax_shapes/tiny'
  info = input_pipeline.get_dataset_info(config)  # Prepares the embedded dataset once.

  def forever():
    epoch = 0
    while True:
      yield from input_pipeline.train_batches(config, global_batch_size=batch, seed=0,
                                              epoch=epoch)
      epoch += 1
  return info.num_classes, forever()


def _seconds_per_step(steps: int, fn) -> float:
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - start) / max(steps, 1)


def run_end_to_end(runner: JaxTrainRunner, steps: int, batches,
                   log: Callable[[str], None] = print) -> dict:
  """Images/s of the input pipeline alone, of the step alone, and of the two together.

  ``runner`` is set up (compiled) for the batches' size and class count; ``batches`` is an
  iterator of the input pipeline's host batches (uint8 crops and their augmentation draws).
  The step alone runs on one device-resident batch; end to end, each step takes the next host batch, copies
  it to the device and trains on it (the trainer's loop, with one device; the copy of batch
  i + 1 overlaps step i through JAX's asynchronous dispatch). The smallest rate bounds the job.
  """
  import jax  # pylint: disable=g-import-not-at-top
  batch, num_classes = runner.batch, runner.num_classes
  runner.step()
  compute = statistics.median(runner.step()[0] for _ in range(max(steps, 1)))
  next(batches)  # Starts the pipeline's threads.
  pipeline = _seconds_per_step(steps, lambda: next(batches))
  carry = {'state': runner.state, 'metrics': None}
  # The pipeline ships uint8 crops; the device makes the inputs (in the main job, inside the
  # step; here in its own jit, as the runner's step is compiled for float32 images).
  from alexnet_jax import device_augment  # pylint: disable=g-import-not-at-top
  to_inputs = jax.jit(device_augment.network_inputs)

  def train_on_next():
    host = jax.device_put(next(batches))
    device_batch = {'image': to_inputs(host), 'label': host['label']}
    carry['state'], carry['metrics'] = runner.compiled(carry['state'], device_batch)

  start = time.perf_counter()
  for _ in range(steps):
    train_on_next()
  jax.block_until_ready((carry['state'], carry['metrics']))
  end_to_end = (time.perf_counter() - start) / max(steps, 1)
  rates = {'input pipeline': batch / pipeline, 'train step': batch / compute}
  metrics = carry['metrics']
  row = {'batch': batch, 'steps': steps, 'num_classes': num_classes,
         'pipeline_images_per_s': rates['input pipeline'],
         'step_images_per_s': rates['train step'],
         'end_to_end_images_per_s': batch / end_to_end,
         'bound_by': min(rates, key=rates.get),
         'final_loss': float(metrics['loss']) if metrics is not None else None}
  log(f'end to end, batch {batch}: pipeline {row["pipeline_images_per_s"]:.0f}, step '
      f'{row["step_images_per_s"]:.0f}, together {row["end_to_end_images_per_s"]:.0f} images/s')
  return row


def _train_row(name: str, batch: int, info: dict, timed: list[dict], model_options: dict,
               ceiling: float, image_size: int) -> dict:
  times = [s['t'] for s in timed]
  median = statistics.median(times)
  flops = flops_lib.analytic_flops(batch, image_size=image_size)
  return {
      'config': name, 'kind': 'jax', 'batch': batch, 'model_options': model_options,
      'step_times_s': times, 'median_s': median, 'images_per_s': batch / median,
      'gflops': flops['step'] / median / 1e9,
      'fraction_of_ceiling': flops['step'] / median / 1e9 / ceiling,
      'xla_flops_per_image': info['xla_flops'] / batch,
      'compile_s': info['compile_s'], 'first_step_s': info['first_step_s'],
      'losses': [s['loss'] for s in timed]}


def _end_to_end(workers, model_options, e2e_steps, e2e_batch, batches_factory, log,
                image_size):
  num_classes, batches = batches_factory(e2e_batch)
  reuse = workers.get(f'train_b{e2e_batch}')
  if reuse is not None and reuse.runner.num_classes == num_classes:
    runner = reuse.runner  # Same compiled step: no second compilation.
  else:
    runner = JaxTrainRunner(e2e_batch, model_options, num_classes, image_size=image_size)
    runner.setup()
  return run_end_to_end(runner, e2e_steps, batches, log)


def run_gpu(batch_sizes: Sequence[int], steps: int, warmup: int, matmul_size: int,
            model_options: dict, chain: int, e2e_steps: int, e2e_batch: int,
            batches_factory=None, log: Callable[[str], None] = print,
            image_size: int = flops_lib.IMAGE_SIZE) -> dict:
  """The single-device bf16 benchmark in this process (JAX only); see :func:`main`.

  ``batches_factory(batch)`` gives (num_classes, host batches of ``image_size`` crops).
  """
  import jax  # pylint: disable=g-import-not-at-top
  workers = {'matmul_bf16': workers_lib.LocalWorker(
      MatmulRunner('jax', matmul_size, 'bfloat16', chain=chain), warmup)}
  for batch in batch_sizes:
    workers[f'train_b{batch}'] = workers_lib.LocalWorker(
        JaxTrainRunner(batch, model_options, chain=chain, image_size=image_size), warmup)
  infos = {}
  for name, worker in workers.items():
    log(f'starting {name}')
    infos[name] = worker.start()
  timed = steps_lib.run_rounds(workers, steps, gap_s=0.0, log=log)
  ceiling = infos['matmul_bf16']['flops'] / statistics.median(
      s['t'] for s in timed['matmul_bf16']) / 1e9
  results = [{'config': 'matmul_bf16', 'kind': 'matmul_jax', 'n': matmul_size,
              'step_times_s': [s['t'] for s in timed['matmul_bf16']], 'gflops': ceiling}]
  results += [_train_row(f'train_b{b}', b, infos[f'train_b{b}'], timed[f'train_b{b}'],
                         model_options, ceiling, image_size) for b in batch_sizes]
  e2e = None
  if e2e_steps > 0:
    e2e = _end_to_end(workers, model_options, e2e_steps, e2e_batch, batches_factory, log,
                      image_size)
  del workers
  device = jax.devices()[0]
  return {'benchmark': 'alexnet_jax train step, one device, bf16 compute / fp32 params',
          'date': datetime.datetime.now().isoformat(timespec='seconds'),
          'command': steps_lib.command_line(),
          'machine': {**steps_lib.machine_info(), 'device': device.device_kind,
                      'backend': jax.default_backend()},
          'settings': {'batch_sizes': list(batch_sizes), 'timed_steps': steps,
                       'warmup_steps': warmup, 'chain': chain, 'matmul_size': matmul_size,
                       'image_size': image_size,
                       'model_options': model_options},
          'ceiling_gflops': ceiling, 'results': results, 'end_to_end': e2e}


def gpu_markdown(data: dict) -> str:
  s = data['settings']
  lines = [f'One {data["machine"]["device"]} ({data["machine"]["backend"]}), bf16 compute with '
           f'fp32 parameters, device-resident synthetic batch; median of {s["timed_steps"]} '
           f'samples of {s["chain"]} chained steps after {s["warmup_steps"]} warm-up samples.', '',
           f'Command: `{data["command"]}` ({data["date"]})', '',
           f'bf16 matmul ceiling (n={s["matmul_size"]}), measured in the same rounds: '
           f'{data["ceiling_gflops"] / 1e3:.1f} TFLOP/s.', '',
           '| batch | images/s | ms/step | TFLOP/s (analytic) | % of bf16 matmul | compile s |',
           '|---|---|---|---|---|---|']
  for r in data['results']:
    if r['kind'] != 'jax':
      continue
    lines.append(f'| {r["batch"]} | {r["images_per_s"]:.0f} | {r["median_s"] * 1e3:.2f} | '
                 f'{r["gflops"] / 1e3:.2f} | {100 * r["fraction_of_ceiling"]:.1f} | '
                 f'{r["compile_s"]:.1f} |')
  e2e = data.get('end_to_end')
  if e2e:
    lines += ['', f'End to end on the embedded dataset ({e2e["num_classes"]} classes), batch '
              f'{e2e["batch"]}, {e2e["steps"]} steps: input pipeline alone '
              f'{e2e["pipeline_images_per_s"]:.0f} images/s, train step alone '
              f'{e2e["step_images_per_s"]:.0f}, together {e2e["end_to_end_images_per_s"]:.0f}: '
              f'bounded by the {e2e["bound_by"]}.']
  return '\n'.join(lines) + '\n'


def main(args):
  """``--gpu``: needs a CUDA jaxlib and one NVIDIA GPU; ``--dry-run`` runs the same code on the
  CPU at toy sizes (for tests)."""
  dry = args.dry_run
  os.environ['JAX_PLATFORMS'] = 'cpu' if dry else 'cuda'
  if dry:
    os.environ['XLA_FLAGS'] = workers_lib.worker_env(Config('gpu', 'jax', 'gpu'))['XLA_FLAGS']
  batch_sizes = args.batch_sizes or ([2, 4] if dry else [128, 256, 512, 1024])
  e2e_batch = args.e2e_batch or (4 if dry else 256)
  e2e_steps = args.e2e_steps if args.e2e_steps is not None else (2 if dry else 30)
  options = dict(GPU_MODEL_OPTIONS)
  if args.gpu_model_options:
    options.update(json.loads(args.gpu_model_options))
  data = run_gpu(batch_sizes, args.steps, args.warmup, args.matmul_size or (128 if dry else 8192),
                 options, chain=1 if dry else 5, e2e_steps=e2e_steps, e2e_batch=e2e_batch,
                 batches_factory=lambda b: embedded_batches(b, args.data_dir, tiny=dry,
                                                            crop_size=args.image_size),
                 log=lambda m: print(m, file=sys.stderr, flush=True), image_size=args.image_size)
  table = gpu_markdown(data)
  print(table)
  json_path = (args.json if args.json != report.DEFAULT_JSON
               else report.DEFAULT_JSON.replace('.json', '_gpu.json'))
  report.write_outputs(data, table, json_path, args.markdown)
  return data
