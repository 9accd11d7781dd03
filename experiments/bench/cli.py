"""The command line of ``experiments/benchmark.py``: flags, and which mode runs."""

from __future__ import annotations

import argparse
import os
import sys

from experiments.bench import configs as configs_lib
from experiments.bench import flops as flops_lib
from experiments.bench import report
from experiments.bench import workers as workers_lib


def _add_common(p: argparse.ArgumentParser) -> None:
  p.add_argument('--configs', nargs='+', default=list(configs_lib.DEFAULT_CONFIGS),
                 help=f'presets {sorted(configs_lib.PRESETS)} or name={{json}} '
                      '(default: %(default)s)')
  p.add_argument('--batch-sizes', nargs='+', type=int, default=None,
                 help='default 32 128 (CPU), 128 256 512 1024 (--gpu), 1 64 (--inference)')
  p.add_argument('--steps', type=int, default=7, help='timed steps per configuration')
  p.add_argument('--warmup', type=int, default=2, help='warm-up steps after the first step')
  p.add_argument('--matmul-size', type=int, default=None,
                 help='n of the n x n ceiling matmul (default 4096; 8192 with --gpu)')
  p.add_argument('--gap', type=float, default=0.2, help='seconds of pause before each step')
  p.add_argument('--image-size', type=int, default=flops_lib.IMAGE_SIZE,
                 help='the training step\'s input height and width (default: %(default)s, the '
                      'paper\'s); a smaller one (67 is the smallest the network takes) only to '
                      'check the logic quickly')
  p.add_argument('--json', default=report.DEFAULT_JSON, help='raw results (default: %(default)s)')
  p.add_argument('--markdown', default=None, help='also write the table here')
  p.add_argument('--readme', default=None,
                 help=f'update the {report.README_START} section of this file with the table '
                      '(--inference: its own inference section)')


def _add_modes(p: argparse.ArgumentParser) -> None:
  p.add_argument('--profile-layers', action='store_true',
                 help='time each layer block forward and forward+backward instead')
  p.add_argument('--profile-ops', action='store_true',
                 help='per-op profile of the compiled JAX step of each of --configs (JAX only)')
  p.add_argument('--profile-variants', nargs='*', default=None,
                 help='with --profile-layers: the variant groups to time (default: all)')
  p.add_argument('--inference', action='store_true',
                 help='forward-only fp32 inference of a preset against ONNX Runtime and '
                      'PyTorch (eager, torch.compile), batch 1 and 64')
  p.add_argument('--preset', default='bvlc', help='with --inference: the network preset')
  # --inference takes --configs from inference.INFERENCE_CONFIGS (default: all of them).
  p.add_argument('--gpu', action='store_true', help='the single-GPU benchmark (bf16, JAX)')
  p.add_argument('--dry-run', action='store_true',
                 help='with --gpu: tiny sizes on the CPU, to check the logic')
  p.add_argument('--e2e-steps', type=int, default=None,
                 help='with --gpu: steps fed by the real input pipeline (0: skip)')
  p.add_argument('--e2e-batch', type=int, default=None, help='with --gpu: its batch size')
  p.add_argument('--gpu-model-options', default=None,
                 help='with --gpu: JSON AlexNet options over gpu.GPU_MODEL_OPTIONS')
  p.add_argument('--data-dir', default=None, help='with --gpu: TFDS data_dir for the embedded set')
  p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  p.add_argument('--xla-flops', type=int, default=None, help=argparse.SUPPRESS)
  p.add_argument('--inference-prepare', default=None, help=argparse.SUPPRESS)


def parse_args(argv=None, description: str = ''):
  p = argparse.ArgumentParser(description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  _add_common(p)
  _add_modes(p)
  return p.parse_args(argv)


def _profile_ops_main(args, configs):
  from experiments.bench import profile_ops  # pylint: disable=g-import-not-at-top
  from experiments.bench import steps  # pylint: disable=g-import-not-at-top
  out = []
  for config in configs:
    for batch in args.batch_sizes or [32]:
      prof = profile_ops.profile_ops(batch, config.model, args.steps)
      prof['config'] = config.name
      print(f'### {config.name}: {config.label}\n\n' + profile_ops.profile_ops_markdown(prof),
            flush=True)
      out.append(prof)
  if args.json and args.json != report.DEFAULT_JSON:
    report.write_outputs({'op_profiles': out, 'machine': steps.machine_info()}, '', args.json,
                         None)
  return out


def _profile_layers_main(args, configs):
  from experiments.bench import profile_layers  # pylint: disable=g-import-not-at-top
  from experiments.bench import steps  # pylint: disable=g-import-not-at-top
  out = []
  jax_configs = [c for c in configs if c.kind == 'jax']
  for batch in args.batch_sizes or [32]:
    for i, config in enumerate(jax_configs):
      # PyTorch's blocks and the variant tables once per batch size (they do not depend on
      # the configuration's options beyond what each variant sets).
      prof = profile_layers.profile_layers(
          batch, config.model, args.steps, configs_lib.torch_available() and i == 0,
          args.profile_variants if i == 0 else [])
      prof['config'] = config.name
      print(f'### {config.name}: {config.label}\n\n' + profile_layers.profile_markdown(prof),
            flush=True)
      out.append(prof)
  if args.json and args.json != report.DEFAULT_JSON:
    report.write_outputs({'profiles': out, 'machine': steps.machine_info()}, '', args.json, None)
  return out


def profile_main(args):
  """``--profile-layers`` / ``--profile-ops``, in this process with the project's XLA flags."""
  flags = workers_lib.worker_env(configs_lib.PRESETS['jax_default'])['XLA_FLAGS']
  if args.profile_ops:
    flags += ' --xla_cpu_enable_xprof_traceme=true'
  os.environ['XLA_FLAGS'] = flags
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  configs = [configs_lib.parse_config(c) for c in args.configs]
  if args.profile_ops:
    return _profile_ops_main(args, configs)
  return _profile_layers_main(args, configs)


def train_step_main(args):
  """The default mode: the training step of every configuration, alternated."""
  from experiments.bench import steps  # pylint: disable=g-import-not-at-top
  configs = [configs_lib.parse_config(c) for c in args.configs]
  report.check_readme(args.readme)
  data = steps.run_benchmark(configs, args.batch_sizes or [32, 128], args.steps, args.warmup,
                             args.matmul_size or 4096, args.gap,
                             log=lambda m: print(m, file=sys.stderr, flush=True),
                             image_size=args.image_size)
  table = report.markdown_report(data)
  print(table)
  report.write_outputs(data, table, args.json, args.markdown)
  if args.readme:
    report.update_readme(args.readme, table)
  return data


def main(argv=None, description: str = '') -> dict | list | None:
  args = parse_args(argv, description)
  if args.worker is not None:
    workers_lib.worker_main(args.worker)
    return None
  if args.xla_flops is not None:
    from experiments.bench import flops  # pylint: disable=g-import-not-at-top
    print(flops.xla_step_flops(args.xla_flops, image_size=args.image_size))
    return None
  if args.inference_prepare is not None:
    from experiments.bench import inference  # pylint: disable=g-import-not-at-top
    inference.prepare_main(args.inference_prepare)
    return None
  if args.gpu:
    from experiments.bench import gpu  # pylint: disable=g-import-not-at-top
    return gpu.main(args)
  if args.inference:
    from experiments.bench import inference  # pylint: disable=g-import-not-at-top
    return inference.main(args)
  if args.profile_layers or args.profile_ops:
    return profile_main(args)
  return train_step_main(args)
