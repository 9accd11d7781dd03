"""How fast is the training input pipeline? Images/s on the embedded dataset, 1 and 2 CPU cores.

    python experiments/pipeline_speed.py [--data_dir=DIR] [--cores=1,2] [--batches=40]

Each measurement runs in a fresh Python process pinned to the first N cores
(``os.sched_setaffinity``, as ``taskset -c 0..N-1`` would) with tf.data's threadpool set to N
threads, so that TensorFlow sizes its pools for N cores. It times ``train_batches`` end to end:
reading cached JPEG bytes, decoding the central square at 256, the random 227 crop, flip, PCA
colour noise, mean removal, batching and the conversion to numpy, after a warm-up of a few
batches, in wall-clock time and per CPU-second of the process (the latter does not depend on
what else the machine is running). A last column times the decode and 256 rescale alone. It
prints a markdown table.

The number to beat is the model's training step on the same machine (about 20-30 images/s for
the full AlexNet on 2 laptop cores): the pipeline should deliver at least twice that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _measure(mode: str, data_dir: str | None, batches: int,
             batch_size: int) -> tuple[float, float]:
  """(images per wall-clock second, images per CPU second) of one pipeline, after warm-up."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (after the affinity is set)
  from alexnet_jax import augment  # pylint: disable=g-import-not-at-top
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  config = input_pipeline.default_data_config()
  config.data_dir = data_dir
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  config.threadpool_size = cores
  input_pipeline.get_dataset_info(config)  # Prepares the dataset on first use.
  warmup = 3
  if mode == 'train':
    def batch_iter():
      epoch = 0
      while True:
        yield from input_pipeline.train_batches(config, global_batch_size=batch_size, seed=0,
                                                epoch=epoch, process_index=0, process_count=1)
        epoch += 1
  else:  # 'decode': the 256 central square only.
    def batch_iter():
      ds = input_pipeline.encoded_examples(config, 'train', shuffle_seed=0).repeat()
      ds = ds.map(tf.autograph.experimental.do_not_convert(
          lambda data, label: augment.decode_and_center_square(data)),
                  num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)
      options = tf.data.Options()
      options.threading.private_threadpool_size = cores
      return ds.with_options(options).as_numpy_iterator()
  it = iter(batch_iter())
  for _ in range(warmup):
    next(it)
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(it)
  wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
  return batches * batch_size / wall, batches * batch_size / cpu


def _child(args):
  cpus = set(range(args.child_cores))
  if hasattr(os, 'sched_setaffinity'):
    os.sched_setaffinity(0, cpus)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  rate, cpu_rate = _measure(args.mode, args.data_dir, args.batches, args.batch_size)
  print(json.dumps({'images_per_s': rate, 'images_per_cpu_s': cpu_rate}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_dir', default=None, help='TFDS data_dir (default: TFDS default)')
  parser.add_argument('--cores', default='1,2', help='comma-separated core counts')
  parser.add_argument('--batches', type=int, default=40, help='timed batches per measurement')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--mode', default='train', help=argparse.SUPPRESS)
  parser.add_argument('--child_cores', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child_cores:
    _child(args)
    return

  available = os.cpu_count() or 1
  rows = []
  for cores in [int(c) for c in args.cores.split(',')]:
    if cores > available:
      print(f'skipping {cores} cores: this machine has {available}', file=sys.stderr)
      continue
    row = {'cores': cores}
    for mode in ('train', 'decode'):
      cmd = [sys.executable, os.path.abspath(__file__), f'--child_cores={cores}', f'--mode={mode}',
             f'--batches={args.batches}', f'--batch_size={args.batch_size}']
      if args.data_dir:
        cmd.append(f'--data_dir={args.data_dir}')
      out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
      result = json.loads(out.strip().splitlines()[-1])
      row[mode], row[mode + '_cpu'] = result['images_per_s'], result['images_per_cpu_s']
    rows.append(row)

  load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
  print(f'\nTraining input pipeline on the embedded dataset ({_cpu_name()}, '
        f'{available} cores visible, load average {load:.1f}, batch {args.batch_size}, '
        f'{args.batches} timed batches):\n')
  print('| cores | train pipeline img/s (wall) | train img per CPU-second | decode + 256 rescale '
        'only, img/s (wall) |')
  print('|---|---|---|---|')
  for row in rows:
    print(f"| {row['cores']} | {row['train']:.0f} | {row['train_cpu']:.0f} | "
          f"{row['decode']:.0f} |")
  print('\n(train = decode + random crop + flip + PCA colour noise + mean removal + batching to '
        'numpy float32. Images per CPU-second do not depend on what else the machine runs; with '
        'an idle machine, wall rate ~ cores x that.)')
  print(f'\ncommand: python experiments/pipeline_speed.py {" ".join(sys.argv[1:])}'.rstrip())


if __name__ == '__main__':
  main()
