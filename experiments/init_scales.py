"""How each weight init starts the paper's network on the default run's data (issue 16).

    python experiments/init_scales.py --num_images 32

For the init schemes the package ships ('paper', 'caffe') and for the fan-in scalings of the
literature (He et al. 2015 'he': variance 2 / fan_in; LeCun 'lecun': 1 / fan_in; Glorot and
Bengio 2010 'glorot': 2 / (fan_in + fan_out); PyTorch's default for Conv2d and Linear, which
torchvision's AlexNet trains from, 'torch_default': 1 / (3 fan_in); every bias 0), it prints,
on centre crops of the embedded training images in the network's input units (0..255 pixels
minus the mean, as the paper feeds them): the initial loss, the std of the logits and of each
layer's output, and each layer's gradient relative to its weights (rms of dL/dW over rms of W,
which times the learning rate is the fraction a step moves the layer).

What it showed (README and ``alexnet_jax/configs/default.py`` quote it): with the paper's raw
0..255 inputs the fan-in scalings start with huge logits (He: loss 42, logit std 32) and
relative gradients of 1-15 per unit rate, so at the paper's rate 0.01 they diverge or collapse;
Caffe's init starts at ln(10) with relative gradients of 0.01-0.05 in the conv layers, which is
the slow start (the ln(10) plateau) the default run shows. The fan-in schemes live here only:
no default uses them.
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import jax  # noqa: E402  (after the path above)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from alexnet_jax import model as model_lib  # noqa: E402

# Variance of each weight as gain / fan, where fan is 'fan_in' or 'fan_avg' (flax's names).
FAN_SCHEMES = {'he': (2.0, 'fan_in'), 'lecun': (1.0, 'fan_in'), 'glorot': (1.0, 'fan_avg'),
               'torch_default': (1.0 / 3.0, 'fan_in')}


def fan_scaled(params, scheme: str, seed: int = 0):
  """``params`` with every kernel redrawn from N(0, gain / fan) and every bias 0.

  A kernel of shape (..., inputs, outputs) has fan_in = prod(shape[:-1]) (for a grouped
  convolution: kh * kw * channels per group) and fan_out = prod(shape[:-2]) * outputs.
  """
  gain, mode = FAN_SCHEMES[scheme]
  rng = np.random.default_rng(seed)
  out = {}
  for name, leaves in params.items():
    shape = leaves['kernel'].shape
    fan_in = float(np.prod(shape[:-1]))
    fan_out = float(np.prod(shape[:-2]) * shape[-1])
    fan = fan_in if mode == 'fan_in' else (fan_in + fan_out) / 2
    kernel = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(gain / fan))
    out[name] = {'kernel': jnp.asarray(kernel), 'bias': jnp.zeros(leaves['bias'].shape)}
  return out


def probe(net: model_lib.AlexNet, params, images, labels) -> dict:
  """Initial loss, logit std, each layer's output std and relative gradient (see above)."""
  def loss_fn(p, x, y):
    logits, state = net.apply({'params': p}, x, train=False, mutable=['intermediates'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, state['intermediates'])
  # Images as arguments, not closed over: XLA would constant-fold them.
  (loss, (logits, taps)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params, images, labels)
  rms = lambda x: float(jnp.sqrt(jnp.mean(jnp.square(x))))  # noqa: E731
  return {'loss': float(loss), 'logit_std': float(jnp.std(logits)),
          'output_std': {k.removesuffix('_out'): float(np.std(v[0])) for k, v in taps.items()},
          'relative_grad': {k: rms(grads[k]['kernel']) / rms(params[k]['kernel'])
                            for k in params}}


def centre_crops(num_images: int, data_dir: str | None):
  """Centre 227 crops of the embedded training images, 0..255 minus the mean, and labels."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], 'GPU')
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from alexnet_jax.datasets import shapes  # pylint: disable=import-outside-toplevel
  builder = tfds.builder(shapes.NAME, data_dir=data_dir)
  builder.download_and_prepare()
  images, labels = [], []
  for example in tfds.as_numpy(builder.as_dataset(split=f'train[:{num_images}]')):
    image = example['image']
    top, left = (image.shape[0] - 227) // 2, (image.shape[1] - 227) // 2
    crop = image[top:top + 227, left:left + 227].astype(np.float32)
    images.append(crop - 255.0 * np.asarray(shapes.MEAN_RGB, np.float32))
    labels.append(example['label'])
  return jnp.asarray(np.stack(images)), jnp.asarray(np.asarray(labels))


def table(results: dict[str, dict]) -> str:
  layers = list(next(iter(results.values()))['relative_grad'])
  taps = list(next(iter(results.values()))['output_std'])
  lines = ['| init | loss | logit std | ' + ' | '.join(f'{t} std' for t in taps) + ' | '
           + ' | '.join(f'{k} grad/w' for k in layers) + ' |',
           '|---' * (3 + len(taps) + len(layers)) + '|']
  for name, r in results.items():
    lines.append(f"| {name} | {r['loss']:.3f} | {r['logit_std']:.3g} | "
                 + ' | '.join(f"{r['output_std'][t]:.3g}" for t in taps) + ' | '
                 + ' | '.join(f"{r['relative_grad'][k]:.2g}" for k in layers) + ' |')
  return '\n'.join(lines)


def main(argv=None) -> dict[str, dict]:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--num_images', type=int, default=32)
  p.add_argument('--data_dir', default=None, help='TFDS data_dir of the embedded dataset')
  args = p.parse_args(argv)
  images, labels = centre_crops(args.num_images, args.data_dir)
  net = model_lib.AlexNet(num_classes=10)
  results = {}
  for scheme in ('paper', 'caffe', *FAN_SCHEMES):
    shipped = scheme in model_lib.INITS
    variables = model_lib.AlexNet(num_classes=10, init_scheme=scheme if shipped else 'caffe').init(
        jax.random.key(0), images[:1], train=False)
    params = variables['params'] if shipped else fan_scaled(variables['params'], scheme)
    results[scheme] = probe(net, params, images, labels)
  print(f'{args.num_images} centre crops of the embedded training images, input std '
        f'{float(jnp.std(images)):.1f} (0..255 units minus the mean):\n')
  print(table(results))
  return results


if __name__ == '__main__':
  main()
