"""How fast is the host's part of the training input? Images per CPU-second, old path vs new.

    python experiments/pipeline_speed.py [--config=...] [--cores=1,2] [--batches=40]
        [--photos=512] [--host_cores=16]

Three datasets:
  embedded   the default config's dataset (JPEGs with a shorter side of 256);
  photos     generated photo-like JPEGs of 500x375 (ImageNet's typical size), quality 90, as a
             folder of class subfolders;
  prepared   the photos after the paper's offline preparation (``alexnet_jax.datasets.prepared``:
             256x256 JPEGs at quality 90 in ArrayRecord).
Two paths:
  old   everything on the host: decode the whole central square, rescale it to 256, random 227
        crop, flip, PCA colour noise, mean removal, float32 batches (the pipeline before the
        device-side augmentation; rebuilt here from ``augment``'s host functions);
  new   ``input_pipeline.train_batches``: decode (only the crop's window) + crop to uint8, the
        example's flip and colour drawn; the device does the rest (``device_augment``).

Each measurement runs in a fresh Python process pinned with ``taskset`` (or
``os.sched_setaffinity``) to the first N cores, with tf.data's threadpool set to N threads. It
times whole batches to numpy after a warm-up, in wall-clock time and per CPU-second of the process
(``time.process_time``: every thread's CPU time, which does not depend on what else the machine
runs). The projection to a host of ``--host_cores`` cores is ``images per CPU-second x cores x
the measured scaling efficiency`` from 1 to the largest measured core count. It prints a markdown
table and the command.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

DATASETS = ('embedded', 'photos', 'prepared')
PATHS = ('old', 'new')
PHOTO_SIZE = (375, 500)  # height, width
PHOTO_QUALITY = 90
PHOTO_CLASSES = 8


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def photo_like(seed: int, size=PHOTO_SIZE):
  """A photo-like uint8 image: smooth colour regions, a few hard-edged objects, sensor noise
  (about 65 kB at 500x375, quality 90; ImageNet's average is ~110 kB, and larger files decode
  somewhat slower, so the 'photos' rows err on the fast side)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  h, w = size
  field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
      (w, h), Image.BICUBIC)
  draw = ImageDraw.Draw(field)
  for _ in range(12):
    x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
    box = [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))]
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
  pixels = np.asarray(field, np.float32) + rng.normal(0, 10, (h, w, 3))
  return np.clip(pixels, 0, 255).astype(np.uint8)


def write_photos(root: str, count: int) -> str:
  """``count`` photo-like JPEGs in ``root/train/<class>/`` and a few in ``root/val/``."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for split, n in (('train', count), ('val', PHOTO_CLASSES)):
    for i in range(n):
      folder = os.path.join(root, split, f'class{i % PHOTO_CLASSES}')
      os.makedirs(folder, exist_ok=True)
      buffer = io.BytesIO()
      Image.fromarray(photo_like(i + (0 if split == 'train' else 10**6))).save(
          buffer, format='JPEG', quality=PHOTO_QUALITY)
      with open(os.path.join(folder, f'{i}.jpg'), 'wb') as f:
        f.write(buffer.getvalue())
  return root


def data_config(base, dataset: str, workdir: str):
  """The data config of ``dataset`` (``base``: the --config's data section)."""
  config = base.copy_and_resolve_references()
  if dataset in ('photos', 'prepared'):
    config.source, config.folder, config.val_fraction = 'folder', os.path.join(workdir, 'photos'), 0
  if dataset == 'prepared':
    config.prepared_dir = os.path.join(workdir, 'prepared')
  return config


def prepare_data(base, workdir: str, photos: int) -> None:
  """The embedded set (TFDS prepares it once), the photos and their prepared copy."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax.datasets import prepared  # pylint: disable=g-import-not-at-top
  input_pipeline.get_dataset_info(data_config(base, 'embedded', workdir))
  write_photos(os.path.join(workdir, 'photos'), photos)
  prepared.prepare_copy(data_config(base, 'photos', workdir), os.path.join(workdir, 'prepared'))


# --------------------------------------------------------------------------------------------
# One measurement (in a pinned child process)
# --------------------------------------------------------------------------------------------
def old_path_batches(config, batch_size: int):
  """The pre-device-augmentation host pipeline: float32 network inputs made on the host."""
  from alexnet_jax import augment  # pylint: disable=g-import-not-at-top
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax.host_tf import tf  # pylint: disable=g-import-not-at-top
  mean, eigval, eigvec = input_pipeline.image_stats(config)

  @tf.autograph.experimental.do_not_convert
  def preprocess(index, example):
    square = augment.decode_and_center_square(example[0], int(config.resize_size))
    image = augment.train_image(square, augment.example_key(0, 0, index), mean_rgb=mean,
                                pca_eigval=eigval, pca_eigvec=eigvec,
                                crop_size=int(config.crop_size))
    return {'image': image, 'label': example[1]}

  ds = input_pipeline.encoded_examples(config, config.train_split, shuffle_seed=0).repeat()
  ds = ds.enumerate().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  options = tf.data.Options()
  options.threading.private_threadpool_size = config.threadpool_size
  options.threading.max_intra_op_parallelism = 1
  return ds.batch(batch_size).prefetch(2).with_options(options).as_numpy_iterator()


def new_path_batches(config, batch_size: int):
  """``input_pipeline.train_batches``, epoch after epoch."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  epoch = 0
  while True:
    yield from input_pipeline.train_batches(config, global_batch_size=batch_size, seed=0,
                                            epoch=epoch, process_index=0, process_count=1)
    epoch += 1


def measure(config, path: str, batches: int, batch_size: int, warmup: int = 3) -> dict:
  """Images per wall-clock second and per CPU-second of this process, after ``warmup`` batches."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  config.threadpool_size = cores
  it = iter((old_path_batches if path == 'old' else new_path_batches)(config, batch_size))
  for _ in range(warmup):
    next(it)
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(it)
  wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
  images = batches * batch_size
  return {'images_per_s': images / wall, 'images_per_cpu_s': images / cpu,
          'bytes_per_image': batch['image'].nbytes / len(batch['image'])}


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
def projection(rows: list[dict], host_cores: int) -> float:
  """Images/s a ``host_cores`` host would deliver: per-CPU-second rate on 1 core x cores x the
  scaling efficiency measured from 1 core to the most cores measured (1 if only one)."""
  by_cores = {r['cores']: r for r in rows}
  one = by_cores[min(by_cores)]
  most = by_cores[max(by_cores)]
  efficiency = min(1.0, (most['images_per_cpu_s'] / one['images_per_cpu_s'])
                   if most is not one else 1.0)
  return one['images_per_cpu_s'] * host_cores * efficiency


def table(results: dict, host_cores: int) -> str:
  """Markdown: one row per (dataset, path, cores), and each path's projection."""
  lines = ['| dataset | path | cores | img/s (wall) | img per CPU-s | bytes/image shipped | '
           f'projected {host_cores}-core host, img/s |', '|---|---|---|---|---|---|---|']
  for (dataset, path), rows in results.items():
    for r in rows:
      lines.append(f"| {dataset} | {path} | {r['cores']} | {r['images_per_s']:.0f} | "
                   f"{r['images_per_cpu_s']:.0f} | {r['bytes_per_image']:.0f} | "
                   f"{projection(rows, host_cores):.0f} |")
  return '\n'.join(lines)


def _child_command(args, dataset: str, path: str, cores: int) -> list[str]:
  cmd = [sys.executable, os.path.abspath(__file__), f'--child={dataset},{path}',
         f'--workdir={args.workdir}', f'--batches={args.batches}',
         f'--batch_size={args.batch_size}', f'--cores={cores}', *args.config_flags]
  if shutil.which('taskset'):
    return ['taskset', '-c', f'0-{cores - 1}'] + cmd
  return cmd


def _child(args, base) -> None:
  cores = int(args.cores)
  if hasattr(os, 'sched_setaffinity') and not shutil.which('taskset'):
    os.sched_setaffinity(0, set(range(cores)))
  dataset, path = args.child.split(',')
  result = measure(data_config(base, dataset, args.workdir), path, args.batches, args.batch_size)
  print(json.dumps(result))


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--cores', default='1,2', help='comma-separated core counts')
  parser.add_argument('--batches', type=int, default=40, help='timed batches per measurement')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--photos', type=int, default=512, help='generated 500x375 JPEGs')
  parser.add_argument('--host_cores', type=int, default=16)
  parser.add_argument('--datasets', default=','.join(DATASETS))
  parser.add_argument('--workdir', default=None, help='data goes here (default: a temp dir)')
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args, rest = parser.parse_known_args(argv)
  args.config_flags = rest  # --config and --config.* as the main job takes them
  return args


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  base = input_pipeline.parse_config_flags(args.config_flags).config.data
  if args.child:
    _child(args, base)
    return
  keep = args.workdir is not None
  args.workdir = args.workdir or tempfile.mkdtemp(prefix='pipeline_speed_')
  try:
    prepare_data(base, args.workdir, args.photos)
    results = {}
    for dataset in args.datasets.split(','):
      for path in PATHS:
        rows = []
        for cores in [int(c) for c in args.cores.split(',') if int(c) <= (os.cpu_count() or 1)]:
          out = subprocess.run(_child_command(args, dataset, path, cores), check=True,
                               capture_output=True, text=True).stdout
          rows.append({'cores': cores, **json.loads(out.strip().splitlines()[-1])})
        results[(dataset, path)] = rows
  finally:
    if not keep:
      shutil.rmtree(args.workdir, ignore_errors=True)
  load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
  print(f'\nHost input pipeline, batch {args.batch_size}, {args.batches} timed batches, '
        f'{os.cpu_count()} cores visible, load average {load:.1f}:\n')
  print(table(results, args.host_cores))
  print(f'\ncommand: python experiments/pipeline_speed.py {" ".join(sys.argv[1:])}'.rstrip())


if __name__ == '__main__':
  main()
