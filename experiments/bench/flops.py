"""FLOPs of one training step: counted from the model's layer table, and as XLA counts them.

The model is imported inside the functions: a worker process must not import JAX before it
measures its framework's baseline memory.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

IMAGE_SIZE = 227  # the paper's input; --image-size sets another (the logic at a small one)


def layer_macs(num_classes: int = 1000, conv_layers=None, fc_layers=None,
               image_size: int = IMAGE_SIZE) -> dict[str, int]:
  """Multiply-adds per image of every weighted layer, from the model's layer table."""
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  conv_layers = model_lib.CONV_LAYERS if conv_layers is None else conv_layers
  fc_layers = model_lib.FC_LAYERS if fc_layers is None else fc_layers
  sides = model_lib.feature_sides(image_size, conv_layers)
  channels, macs = 3, {}
  for name, features, ksize, _, _, groups in conv_layers:
    macs[name] = sides[name] ** 2 * features * ksize * ksize * (channels // groups)
    channels = features
  fan_in = sides['pool5'] ** 2 * channels
  for name, features in tuple(fc_layers) + (('fc8', num_classes),):
    macs[name] = fan_in * features
    fan_in = features
  return macs


def analytic_flops(batch: int, num_classes: int = 1000,
                   image_size: int = IMAGE_SIZE) -> dict[str, Any]:
  """FLOPs of one training step, counted from the layer table (multiply-add = 2 FLOPs).

  Forward: 2 x MACs of every conv and dense layer. Backward: the weight gradient costs the same
  again, and so does the input gradient, except for conv1 (nobody needs the images' gradient).
  Elementwise work (ReLU, LRN, pooling, dropout, softmax, the SGD update) is left out: it is
  under 1% of the total and is not matmul-like work that the ceiling measures.
  """
  per_image = {}
  for name, macs in layer_macs(num_classes, image_size=image_size).items():
    fwd = 2 * macs
    per_image[name] = {'forward': fwd, 'weight_grad': fwd,
                       'input_grad': 0 if name == 'conv1' else fwd}
  forward = sum(v['forward'] for v in per_image.values())
  total = sum(sum(v.values()) for v in per_image.values())
  return {'per_image_by_layer': per_image, 'forward_per_image': forward,
          'step_per_image': total, 'step': total * batch, 'batch': batch}


def xla_step_flops(batch: int, num_classes: int = 1000, image_size: int = IMAGE_SIZE) -> float:
  """XLA's cost analysis of the train step differentiated by XLA itself (no custom VJPs).

  The network's FLOP count from XLA's side. The step as configured may compute kernel
  gradients in a ``lax.scan``, whose body XLA's cost analysis counts once, not once per
  iteration: so the count is taken from the XLA-native formulation of the same step.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax import optim  # pylint: disable=g-import-not-at-top
  from alexnet_jax import steps  # pylint: disable=g-import-not-at-top
  from experiments.bench.configs import LEARNING_RATE  # pylint: disable=g-import-not-at-top
  model = model_lib.AlexNet(num_classes=num_classes, **model_lib.XLA_NATIVE_IMPLS)
  tx = optim.sgd_with_injected_lr(LEARNING_RATE)
  shape = (batch, image_size, image_size, 3)
  state = jax.eval_shape(
      lambda: steps.create_train_state(jax.random.key(0), model, tx, (1, *shape[1:])))
  batch_shapes = {'image': jax.ShapeDtypeStruct(shape, jnp.float32),
                  'label': jax.ShapeDtypeStruct((batch,), jnp.int32)}
  step_fn, _ = steps.make_single_device_steps(model, tx)
  cost = step_fn.lower(state, batch_shapes).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def xla_step_flops_subprocess(batch: int, image_size: int = IMAGE_SIZE) -> float:
  """:func:`xla_step_flops` in a fresh one-device process (the parent runs no JAX computation)."""
  from experiments.bench import workers  # pylint: disable=g-import-not-at-top
  from experiments.bench.configs import Config  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, workers.SCRIPT, '--xla-flops', str(batch),
                         '--image-size', str(image_size)],
                        capture_output=True, text=True, check=False,
                        env=workers.worker_env(Config('xla_flops', 'jax', 'xla_flops')))
  if proc.returncode:
    raise RuntimeError(f'XLA FLOP count failed:\n{proc.stderr[-3000:]}')
  return float(proc.stdout.strip().splitlines()[-1])
