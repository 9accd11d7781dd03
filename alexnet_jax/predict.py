"""Classify photos: ``python -m alexnet_jax.predict --weights FILE_OR_WORKDIR PATH...``.

Prints the top-5 classes of every image with their probabilities, under the file's path::

    photos/hopper.jpg
      <probability>  <synset id>  <name>     (five lines, most probable first)

``--weights`` takes any file ``alexnet_jax.weights.load`` reads (a ``.caffemodel``, ``.onnx``,
torchvision ``.pth``/``.safetensors``, this project's own format) or a training run's workdir.
A file's preset (the network it holds) decides the preprocessing (``model.PRESET_INPUTS`` and
``model.preprocess``): the image resized to 256 (Caffe's models: warped to 256x256; the others:
the shorter side), centre-cropped to the preset's input size, normalised as that preset was
trained; a file that records another input size (ours, of a run trained at another crop) is
cropped to that, from an image resized in the same ratio. A workdir is preprocessed as its
run's evaluation was, at the crop its checkpoint records. ImageNet models (1000 outputs)
are labelled with ImageNet's synset ids and names; a workdir with its run's own classes.

Folders are searched for image files recursively; images go through the network in batches.
Files that cannot be read as images are skipped with a ``warning:`` line and counted.
``--ten-crop`` averages the softmax over the paper's ten patches; ``--json`` prints one JSON
object for machines.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

from alexnet_jax import class_names  # noqa: E402
from alexnet_jax import photos  # noqa: E402
from alexnet_jax import pretrained  # noqa: E402

TOP_K = 5


class UsageError(ValueError):
  """Something the user can fix: the message says what."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """How a photo becomes the network's input."""
  resize_size: int
  crop_size: int
  warp: bool
  normalize: Callable  # uint8 pixels (..., H, W, 3) -> the network's float32 input
  description: str


def preset_inputs(name: str, crop_size: int | None = None) -> InputSpec:
  """A preset's published preprocessing (resize, crop, ``model.preprocess``); with
  ``crop_size`` (weights made for another input than the preset's) the centre crop is that,
  from an image resized in the preset's ratio of resize to crop."""
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  if name not in model_lib.PRESETS:
    raise UsageError(f'unknown preset {name!r}; use one of {", ".join(model_lib.PRESETS)}.')
  fields = dict(pretrained.preset_data_fields(name))
  if crop_size and crop_size != fields['crop_size']:
    fields['resize_size'] = round(fields['resize_size'] * crop_size / fields['crop_size'])
    fields['crop_size'] = crop_size
  return InputSpec(fields['resize_size'], fields['crop_size'], fields['warp'],
                   functools.partial(model_lib.preprocess, name),
                   f'{name} preset ({"warp" if fields["warp"] else "shorter side"} to '
                   f'{fields["resize_size"]}, centre {fields["crop_size"]})')


def run_inputs(workdir: str, config: dict) -> InputSpec:
  """The preprocessing of a training run's evaluation, from its ``config.json``."""
  data = config['data']
  # .get: a config.json written before data.preprocess and data.warp existed lacks them (the
  # other fields are in every config.json a run with checkpoints wrote).
  if data.get('preprocess'):  # a run that took a preset's preprocessing (fine-tuning)
    spec = preset_inputs(data['preprocess'])
    return dataclasses.replace(spec, warp=bool(data['warp']), crop_size=int(data['crop_size']))
  mean = np.asarray(data['mean_rgb'], np.float32)
  if data['stats_file']:
    try:
      with open(os.path.expanduser(data['stats_file']), encoding='utf-8') as f:
        mean = np.asarray(json.load(f)['mean_rgb'], np.float32)
    except (OSError, ValueError, KeyError) as e:
      raise UsageError(f'the run in {workdir} used the statistics file {data["stats_file"]}, '
                       f'which cannot be read ({e}); put it back.') from e
  scale = float(data['input_scale'])

  def normalize(pixels):  # the input pipeline's: (pixels / 255 - mean_rgb) * input_scale
    return ((np.asarray(pixels, np.float32) / 255.0 - mean) * scale).astype(np.float32)

  resize, crop = int(data['resize_size']), int(data['crop_size'])
  return InputSpec(resize, crop, bool(data.get('warp', False)), normalize,
                   f'the run\'s own (shorter side to {resize}, centre {crop})')


def load_weights(path: str, preset: str | None):
  """``(model, variables, inputs, names)`` for ``--weights`` (a file or a run's workdir)."""
  from alexnet_jax import weights  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise UsageError(f'--weights {path} does not exist; pass a weights file or a run\'s workdir.')
  try:
    model, variables, size, _ = weights.load_network(path, preset=preset)
  except weights.WeightsError as e:
    raise UsageError(str(e)) from e
  # A run (its workdir, checkpoints/ or one checkpoint): its own classes and preprocessing,
  # at the crop its checkpoint records (config.json's, unless a run's files were mixed).
  workdir = weights.run_dirs(path)[0] if os.path.isdir(path) else None
  if workdir:
    with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
      inputs = run_inputs(workdir, json.load(f))
    inputs = dataclasses.replace(inputs, crop_size=size)
  else:
    inputs = preset_inputs(pretrained.preset_name(model), size)
  names = class_names.for_model(model.num_classes, workdir)
  return model, variables, inputs, names


def image_batches(files: list[str], inputs: InputSpec, batch_size: int, ten_crop: bool,
                  skipped: list) -> Iterator[tuple[list[str], np.ndarray]]:
  """``(files, uint8 pixels)`` of up to ``batch_size`` readable images at a time.

  An unreadable file is warned about on stderr, appended to ``skipped`` as ``(file, reason)``
  and left out.
  """
  batch_files, batch = [], []
  for path in files:
    try:
      batch.append(photos.prepare(path, inputs.resize_size, inputs.crop_size, inputs.warp,
                                  ten_crop))
      batch_files.append(path)
    except (OSError, ValueError, SyntaxError) as e:  # Pillow raises all three on bad files
      reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      print(f'warning: skipped {path}: not a readable image ({reason}).', file=sys.stderr,
            flush=True)
      skipped.append((path, reason))
      continue
    if len(batch) == batch_size:
      yield batch_files, np.stack(batch)
      batch_files, batch = [], []
  if batch:
    yield batch_files, np.stack(batch)


def make_classifier(model, variables, inputs: InputSpec, batch_size: int):
  """A function uint8 pixels (n <= batch_size, [10,] H, W, 3) -> probabilities (n, classes).

  Batches are padded to ``batch_size`` so that one compiled program serves every batch.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  # The weights are an argument, put on the device once: a jitted closure over them would bake
  # 240 MB of constants into the program (bvlc at batch 2: first call 5.2 -> 1.7 s).
  probabilities = jax.jit(model_lib.predict_probabilities, static_argnums=0)
  variables = jax.device_put(variables)

  def classify(pixels: np.ndarray) -> np.ndarray:
    count = pixels.shape[0]
    padded = np.concatenate([pixels, np.zeros((batch_size - count,) + pixels.shape[1:],
                                              pixels.dtype)]) if count < batch_size else pixels
    return np.asarray(probabilities(model, variables, inputs.normalize(padded)))[:count]

  return classify


def top_classes(probs: np.ndarray, names, k: int = TOP_K) -> list[dict]:
  """The ``k`` most probable classes of one image, most probable first."""
  synsets = (class_names.imagenet_synsets()
             if tuple(names) == class_names.imagenet_names() else None)
  order = np.argsort(-probs, kind='stable')[:k]
  return [{'index': int(i), **({'synset': synsets[i]} if synsets else {}), 'name': names[i],
           'probability': float(probs[i])} for i in order]


def format_text(file: str, top: list[dict]) -> str:
  lines = [file]
  for entry in top:
    label = f'{entry["synset"]}  {entry["name"]}' if 'synset' in entry else entry['name']
    lines.append(f'  {entry["probability"]:.4f}  {label}')
  return '\n'.join(lines)


def parse_args(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m alexnet_jax.predict',
      description='Top-5 classes of photos with an AlexNet (imported weights or a run).')
  parser.add_argument('paths', nargs='+', metavar='PATH', help='image files or folders')
  parser.add_argument('--weights', required=True,
                      help='a weights file (.caffemodel, .onnx, .pth, .safetensors, ours) or a '
                      'run\'s workdir')
  parser.add_argument('--preset', default=None,
                      help='the network the weights file must hold (checked; default: what the '
                      'file says)')
  parser.add_argument('--ten-crop', action='store_true',
                      help='average over the ten patches (corners, centre, mirrored)')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  parser.add_argument('--batch-size', type=int, default=32)
  parser.add_argument('--top', type=int, default=TOP_K, help='classes per image')
  return parser.parse_args(argv)


def predict(args: argparse.Namespace) -> dict:
  """Runs the command: prints the results, returns them (``predictions``, ``skipped``)."""
  if args.batch_size < 1 or args.top < 1:
    raise UsageError('--batch-size and --top must be at least 1.')
  files = photos.find_images(args.paths)
  if not files:
    raise UsageError(f'no image files in {" ".join(args.paths)}; pass image files or folders '
                     f'holding files ending in {", ".join(photos.IMAGE_SUFFIXES[:4])}, ...')
  model, variables, inputs, names = load_weights(args.weights, args.preset)
  batch_size = min(args.batch_size, len(files))  # a few photos: no padding to a large batch
  classify = make_classifier(model, variables, inputs, batch_size)
  predictions, skipped = [], []
  for batch_files, pixels in image_batches(files, inputs, batch_size, args.ten_crop, skipped):
    for file, probs in zip(batch_files, classify(pixels)):
      top = top_classes(probs, names, min(args.top, len(names)))
      predictions.append({'file': file, 'top': top})
      if not args.json:
        print(format_text(file, top), flush=True)
  if not predictions:
    raise UsageError(f'none of the {len(files)} files could be read as an image.')
  result = {'weights': args.weights, 'preprocessing': inputs.description,
            'ten_crop': bool(args.ten_crop), 'predictions': predictions,
            'skipped': [{'file': f, 'reason': r} for f, r in skipped]}
  if args.json:
    print(json.dumps(result, indent=1))
  print(f'{len(predictions)} images classified, {len(skipped)} skipped (unreadable).',
        file=sys.stderr, flush=True)
  return result


def main(argv=None) -> None:
  """Entry point: errors a user can cause end in one ``error:`` line and exit status 2."""
  args = parse_args(argv)
  try:
    predict(args)
  except (UsageError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
    if os.environ.get('ALEXNET_JAX_TRACEBACK'):
      raise
    print(f'error: {str(e).strip().splitlines()[0]}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  main()
