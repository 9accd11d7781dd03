"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) as pure Flax linen modules.

This module imports only jax, numpy and flax: other JAX projects can ``import
alexnet_jax.model`` without pulling in TensorFlow, the input pipeline or training code. The
kernels (LRN, pooling, the tower convolution and their fast paths) live beside it in
``alexnet_jax.ops`` and are re-exported here.

The network (input NHWC float images of 227x227x3, output logits)::

    conv1  96 @ 11x11x3, stride 4, valid, ReLU         55x55x96
    norm1  LRN (groups=2), pool1 max 3x3/2              27x27x96
    conv2  256 @ 5x5x48, 2 groups, pad 2, ReLU          27x27x256
    norm2  LRN (groups=2), pool2 max 3x3/2              13x13x256
    conv3  384 @ 3x3x256, pad 1, ReLU (sees both towers) 13x13x384
    conv4  384 @ 3x3x192, 2 groups, pad 1, ReLU         13x13x384
    conv5  256 @ 3x3x192, 2 groups, pad 1, ReLU         13x13x256
    pool5  max 3x3/2                                     6x6x256
    fc6    9216 -> 4096, ReLU, dropout 0.5
    fc7    4096 -> 4096, ReLU, dropout 0.5
    fc8    4096 -> num_classes (logits; no softmax)
    60,965,224 parameters for 1000 classes.

Presets
-------
``preset(name, **overrides)`` builds the published AlexNets from ``AlexNet``'s fields
(:data:`PRESETS`); ``preprocess(name, images)`` is each one's pixel preprocessing and
:data:`PRESET_INPUTS` its input size, resize, published accuracy and weight source:

============  ==================================================  =====  ==============================
preset        differences from the paper                          input  preprocessing (RGB 0..255 in)
============  ==================================================  =====  ==============================
paper         (the network above; the default)                    227    minus ImageNet's mean pixel
bvlc          Caffe's LRN (k 1, alpha 1e-4/5, windows across all  227    minus Caffe's mean pixel
              channels), Caffe init
caffenet      as bvlc, pool before norm                           227    minus Caffe's mean pixel
torchvision   64-192-384-256-256, conv1 pad 2, no LRN, no groups, 224    /255, ImageNet mean/std
              adaptive average pool to 6x6, dropout before fc6/fc7
============  ==================================================  =====  ==============================

Caffe pools with ceil rounding; at 227 every pool divides exactly, so ours (floor) is the same.

Parameter layout (a public contract: weight converters and ``alexnet_jax.layout`` rely on it)
-------------------------------------------------------------------------------------------
``params = {'conv1': {'kernel', 'bias'}, ..., 'conv5': ..., 'fc6': ..., 'fc7': ..., 'fc8': ...}``

* Conv kernels are HWIO. A grouped conv's kernel is stored as ``(kh, kw, in_channels // groups,
  out_channels)``, exactly the layout of ``lax.conv_general_dilated(..., feature_group_count=2)``
  and of ``flax.linen.Conv(feature_group_count=2)``: output channels ``[0:out/2]`` belong to
  tower 0 and see input channels ``[0:in/2]``; ``[out/2:out]`` belong to tower 1.
* Dense kernels are ``(in, out)``. fc6's input is the flatten of the (6, 6, 256) map in HWC
  order (row-major over height, width, channel).
* Biases are ``(out,)``.
* The same names, layouts and fc6 flatten for every preset (only the widths differ).

Splitting every kernel's output axis in two gives each tower's weights: this is how the paper's
two GPUs held the network and how ``alexnet_jax.layout`` places it on a ``model`` mesh axis.

Model parallelism
-----------------
With ``model_axis`` set, the module runs inside ``jax.shard_map`` on one shard of a mesh axis and
expects the local shard of every kernel (output features divided by the axis size). Which layers
are split is chosen by ``model_parallel_convs`` (the paper's two towers: conv layers split, each
device holding one tower) and ``model_parallel_fcs`` (fully-connected layers split). Activations
cross devices only where the paper's GPUs exchanged them: at conv3's input, at the inputs of
fc6, fc7 and fc8, and for the logits. With convs replicated and fcs split (Krizhevsky 2014,
"one weird trick") the batch is gathered over ``model_axis`` before fc6 instead.

The model returns logits: softmax belongs to the loss (``optax.softmax_cross_entropy``) and to
prediction helpers such as :func:`predict_probabilities`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

# The kernels, re-exported: ``alexnet_jax.model.max_pool`` and the like keep working.
from alexnet_jax.ops.conv import (NARROW_CONV_CHANNELS, Conv1Impl, ConvImpl,  # noqa: F401
                                  NarrowConvImpl, TowerConv, WeightGrad, conv2d,
                                  conv_weight_grad_matmul, grouped_conv, space_to_depth_blocks,
                                  space_to_depth_conv)
from alexnet_jax.ops.lrn import (LocalResponseNorm, LrnGrad, LrnImpl,  # noqa: F401
                                 WindowSum, local_response_norm, lrn_window)
from alexnet_jax.ops.pool import PoolFn, PoolImpl, adaptive_avg_pool, max_pool  # noqa: F401

Array = jax.Array
Dtype = Any
Auto = Literal['auto']

NUM_PARAMS_1000_CLASSES = 60_965_224


# --------------------------------------------------------------------------------------------
# The layer table
# --------------------------------------------------------------------------------------------
# (name, features, kernel, stride, padding, groups) of the five conv layers, as in the paper
# (and in BVLC's bvlc_alexnet and CaffeNet). AlexNet.conv_layers takes a table of this form.
CONV_LAYERS = (
    ('conv1', 96, 11, 4, 0, 1),
    ('conv2', 256, 5, 1, 2, 2),
    ('conv3', 384, 3, 1, 1, 1),
    ('conv4', 384, 3, 1, 1, 2),
    ('conv5', 256, 3, 1, 1, 2),
)
# torchvision's single-tower variant (Krizhevsky 2014, "one weird trick"): other widths, conv1
# padded by 2, no groups.
TORCHVISION_CONV_LAYERS = (
    ('conv1', 64, 11, 4, 2, 1),
    ('conv2', 192, 5, 1, 2, 1),
    ('conv3', 384, 3, 1, 1, 1),
    ('conv4', 256, 3, 1, 1, 1),
    ('conv5', 256, 3, 1, 1, 1),
)
FC_LAYERS = (('fc6', 4096), ('fc7', 4096))
LAYER_NAMES = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')
# The overlapping max-pools (window 3, stride 2, no padding): after the LRN of these layers
# (pool1, pool2; with ``lrn_after_pool`` before it), and after the last conv layer (pool5).
POOL_WINDOW, POOL_STRIDE = 3, 2
NORM_POOL_AFTER = ('conv1', 'conv2')


def pool_side(size: int) -> int:
  """The side of a max-pool's output map (window 3, stride 2, no padding) on a ``size`` map."""
  return (size - POOL_WINDOW) // POOL_STRIDE + 1


def feature_sides(image_size: int, conv_layers=CONV_LAYERS) -> dict[str, int]:
  """The side of every conv and max-pool output map for square inputs of ``image_size``, in
  the network's order; the last entry is the map fc6 flattens (before ``avg_pool_size``'s
  average pool, if any). At the paper's 227: conv1 55, pool1 27, conv2 27, pool2 13, conv3 to
  conv5 13, pool5 6. A side below 1 means the input is too small for the table."""
  size, sides = image_size, {}
  for index, (name, _, kernel, stride, pad, _) in enumerate(conv_layers):
    size = sides[name] = (size + 2 * pad - kernel) // stride + 1
    if name in NORM_POOL_AFTER or index == len(conv_layers) - 1:
      size = sides['pool' + name.removeprefix('conv')] = pool_side(size)
  return sides


# Weight std and bias value per layer for each init scheme.
INITS = {
    # The paper: every weight N(0, 0.01); bias 1 in conv2, conv4, conv5, fc6, fc7, else 0.
    'paper': {
        'std': dict.fromkeys(LAYER_NAMES, 0.01),
        'bias': {'conv1': 0., 'conv2': 1., 'conv3': 0., 'conv4': 1., 'conv5': 1., 'fc6': 1.,
                 'fc7': 1., 'fc8': 0.},
    },
    # Caffe's bvlc_alexnet: fc6/fc7 std 0.005 and biases 0.1 where the paper has 1.
    'caffe': {
        'std': {**dict.fromkeys(LAYER_NAMES, 0.01), 'fc6': 0.005, 'fc7': 0.005},
        'bias': {'conv1': 0., 'conv2': .1, 'conv3': 0., 'conv4': .1, 'conv5': .1, 'fc6': .1,
                 'fc7': .1, 'fc8': 0.},
    },
}


# What AlexNet's 'auto' implementation options become (see AlexNet and experiments/PERF.md).
# XLA:CPU: kernel gradients as matrix products, conv1 as a space-to-depth stride-1
# convolution, grouped convolutions as one convolution per group, max-pool with a hand-written
# gradient: each one measured faster there than XLA's own path (whose convolution kernel
# gradients, grouped convolutions and select-and-scatter are slow paths on XLA:CPU).
CPU_IMPLS = {'pool_impl': 'strided_argmax', 'conv_impl': 'split', 'conv_weight_grad': 'matmul',
             'conv1_impl': 'space_to_depth', 'narrow_conv_impl': 'padded_output'}
# Other backends (GPU, TPU): XLA's own implementations.
XLA_NATIVE_IMPLS = {'pool_impl': 'reduce_window', 'conv_impl': 'feature_group_count',
                    'conv_weight_grad': 'xla', 'conv1_impl': 'direct', 'narrow_conv_impl': 'xla'}


# --------------------------------------------------------------------------------------------
# Presets: the published AlexNets as AlexNet field values
# --------------------------------------------------------------------------------------------
_CAFFE_LRN = dict(lrn_size=5, lrn_k=1.0, lrn_alpha=1e-4 / 5, lrn_beta=0.75, lrn_groups=1)
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's network: AlexNet's defaults.
    'paper': {},
    # BVLC's bvlc_alexnet (Caffe): the paper's layers, but Caffe's LRN (k 1, alpha 1e-4 divided
    # by the window size as Caffe does, windows across all channels of the layer, not per
    # tower), norm before pool, Caffe's training init.
    'bvlc': dict(_CAFFE_LRN, lrn_after_pool=False, init_scheme='caffe'),
    # BVLC's bvlc_reference_caffenet: bvlc_alexnet with pool before norm.
    'caffenet': dict(_CAFFE_LRN, lrn_after_pool=True, init_scheme='caffe'),
    # torchvision's alexnet: 64-192-384-256-256, no LRN, no groups, adaptive average pooling to
    # 6x6 before fc6 (any input of at least 63 pixels), dropout before fc6 and fc7.
    'torchvision': dict(conv_layers=TORCHVISION_CONV_LAYERS, use_lrn=False, avg_pool_size=6,
                        dropout_before_fc=True),
}


@dataclasses.dataclass(frozen=True)
class PresetInputs:
  """What a preset's published weights expect and reached (ILSVRC-2012 validation).

  ``input_size``: the square crop the network takes; ``resize``: the image is first resized to
  this (Caffe: both sides warped to 256x256; torchvision and the paper: the shorter side to
  256); ``top1``/``top5``: published accuracy in %, single centre crop unless ``evaluation``
  says otherwise; ``weights``: where the weights come from.
  """
  input_size: int
  resize: int
  top1: float | None
  top5: float | None
  evaluation: str
  weights: str


PRESET_INPUTS = {
    'paper': PresetInputs(227, 256, 59.3, 81.8, 'one network, average of 10 crops (the paper)',
                          'none published by the authors; train with this project'),
    'bvlc': PresetInputs(227, 256, 57.1, 80.2, 'centre crop',
                         "BVLC Caffe model zoo bvlc_alexnet.caffemodel; ONNX model zoo "
                         "bvlcalexnet-9/-12.onnx"),
    'caffenet': PresetInputs(227, 256, 57.4, 80.4, 'centre crop',
                             'BVLC Caffe model zoo bvlc_reference_caffenet.caffemodel'),
    'torchvision': PresetInputs(224, 256, 56.522, 79.066, 'centre crop',
                                'torchvision alexnet-owt-7be5be79.pth (IMAGENET1K_V1)'),
}

# ImageNet's mean pixel in [0, 1] RGB units (fb.resnet.torch's, also torchvision's), and
# torchvision's per-channel std.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# Caffe's ImageNet mean pixel (the mean of ilsvrc_2012_mean), 0..255, in RGB order: Caffe's
# BGR (104.007, 116.669, 122.679) reversed, since our converted models take RGB.
CAFFE_MEAN_RGB = (122.679, 116.669, 104.007)


def _check_preset(name: str) -> None:
  if name not in PRESETS:
    raise ValueError(f'Unknown AlexNet preset {name!r}; use one of {", ".join(PRESETS)}.')


def preset(name: str = 'paper', **overrides) -> AlexNet:
  """The ``AlexNet`` of a named preset ('paper', 'bvlc', 'caffenet', 'torchvision').

  ``overrides`` set any other field, e.g. ``preset('bvlc', num_classes=21, dtype=jnp.bfloat16)``.
  """
  _check_preset(name)
  return AlexNet(**{**PRESETS[name], **overrides})


def changed_from_paper(fields: dict[str, Any]) -> dict[str, Any]:
  """The entries of ``fields`` (AlexNet field -> value) that differ from the paper's network.

  A run's config lists every model field with the paper's values; with ``model.preset`` set,
  only the fields changed from those apply on top of the preset (``trainer.build_model`` and
  ``weights.load`` of a run both read a config this way).
  """
  paper = {f.name: f.default for f in dataclasses.fields(AlexNet)}
  return {k: v for k, v in fields.items() if k in paper and v != paper[k]}


def preprocess_affine(name: str) -> tuple[np.ndarray, np.ndarray]:
  """``(scale, offset)``, float32 (3,) each: a preset's pixel preprocessing is per channel
  ``pixels * scale + offset`` (what :func:`preprocess` computes, and what the input pipeline
  ships for the device to apply to its uint8 crops, ``data.preprocess``).

  'paper': the project's input pipeline (``(pixels / 255 - IMAGENET_MEAN_RGB) * 255``: 0..255
  units minus the mean pixel); 'bvlc', 'caffenet': Caffe's (0..255 minus
  :data:`CAFFE_MEAN_RGB`); 'torchvision': ``(pixels / 255 - IMAGENET_MEAN_RGB) /
  IMAGENET_STD_RGB``.
  """
  _check_preset(name)
  mean = np.asarray(IMAGENET_MEAN_RGB, np.float64)
  if name == 'paper':
    scale, offset = np.ones(3), -255.0 * mean
  elif name in ('bvlc', 'caffenet'):
    scale, offset = np.ones(3), -np.asarray(CAFFE_MEAN_RGB, np.float64)
  else:
    std = np.asarray(IMAGENET_STD_RGB, np.float64)
    scale, offset = 1.0 / (255.0 * std), -mean / std
  return scale.astype(np.float32), offset.astype(np.float32)


def preprocess(name: str, images: Array) -> Array:
  """A preset's pixel preprocessing: RGB NHWC images in 0..255 (uint8 or float) -> float32.

  The images are already resized and cropped to the preset's ``PRESET_INPUTS[name].input_size``.
  The per-channel affine map of :func:`preprocess_affine` (which says each preset's). Jittable.
  """
  scale, offset = preprocess_affine(name)
  return jnp.asarray(images).astype(jnp.float32) * scale + offset


# --------------------------------------------------------------------------------------------
# AlexNet
# --------------------------------------------------------------------------------------------
def _axis_size(axis_name: str | None) -> int:
  return 1 if axis_name is None else lax.axis_size(axis_name)


def _gather_features(x: Array, axis_name: str | None) -> Array:
  """Concatenate the model shards' feature slices (last axis), in shard order."""
  if axis_name is None or _axis_size(axis_name) == 1:
    return x
  return lax.all_gather(x, axis_name, axis=x.ndim - 1, tiled=True)


class AlexNet(nn.Module):
  """The paper's AlexNet. ``model.apply(variables, images, train=False)`` -> logits.

  :func:`preset` builds the published variants (BVLC's, CaffeNet, torchvision's) from the
  fields below; the parameter contract (module docstring) holds for all of them.

  Attributes (defaults are the paper's):
    num_classes: size of the output layer fc8.
    dropout_rate: dropout on fc6 and fc7 when ``train=True`` (needs a 'dropout' rng).
    dropout_before_fc: False (the paper, Caffe) drops fc6's and fc7's outputs, after the ReLU;
      True (torchvision) drops fc6's and fc7's inputs (same parameters, same eval numbers).
    conv_layers: the five conv layers' geometry, rows ``(name, features, kernel, stride,
      padding, groups)`` named conv1..conv5: :data:`CONV_LAYERS` (the paper's) or
      :data:`TORCHVISION_CONV_LAYERS`.
    avg_pool_size: None (the paper) feeds pool5's map to fc6 as it is (6x6 at 227 input); an
      int ``s`` first averages it to ``s x s`` as ``torch.nn.AdaptiveAvgPool2d(s)`` does
      (torchvision: 6, so that any input of at least 63 pixels works).
    use_lrn: False drops both LRN layers (the paper's ablation; torchvision's variant).
    lrn_after_pool: False is the paper's conv -> ReLU -> LRN -> pool; True is the seed's and
      CaffeNet's conv -> ReLU -> pool -> LRN (same shapes, different numbers).
    lrn_groups: 2 keeps LRN windows inside each tower, as on the paper's two GPUs; 1 lets them
      run across all channels of the layer (Caffe).
    lrn_size, lrn_k, lrn_alpha, lrn_beta: the LRN's n, k, alpha, beta in the paper's formula
      (alpha multiplies the sum of squares; Caffe's alpha is this one times ``lrn_size``).
    init_scheme: (not ``init``, which is linen's method) 'paper' (every weight N(0, 0.01),
      bias 1 on conv2/4/5 and fc6/7, 0 elsewhere) or 'caffe' (fc6/fc7 std 0.005 and biases
      0.1 in place of 1; escapes the long plateau at ln(num_classes) that the paper's init
      can show).
    dtype: compute dtype (e.g. ``jnp.bfloat16``); None computes in the parameters' dtype.
      Logits are always returned as float32.
    param_dtype: parameter dtype (float32).
    pool_impl, lrn_impl, conv_impl, lrn_grad, conv_weight_grad, conv1_impl, narrow_conv_impl:
      numerically equivalent implementations (speed only; equal up to fp32 rounding): how
      pooling, the LRN window sum, grouped convolutions, the LRN gradient and conv kernel
      gradients are computed, whether conv1 runs as a space-to-depth stride-1 convolution, and
      whether convolutions with few output channels run with extra padding, cropped (so that
      XLA:CPU spreads them over all cores). 'auto' (the default)
      takes :data:`CPU_IMPLS` when JAX's default backend is the CPU (the fastest measured on
      XLA:CPU, experiments/PERF.md) and :data:`XLA_NATIVE_IMPLS` elsewhere (XLA's own
      convolution gradients, grouped convolutions and pooling, which GPUs and TPUs run well).
      The package holds what a default picks and XLA's own path of each op (the tests'
      reference); variants that only an experiment times (other LRN window sums, a max-pool
      of strided slices) live in experiments/lrn_formulations.py and
      experiments/bench/model_options.py and come in as functions: ``lrn_impl`` takes a
      :data:`WindowSum`, ``pool_impl`` a :data:`PoolFn`.
    model_axis, model_parallel_convs, model_parallel_fcs: model parallelism inside
      ``jax.shard_map`` (see the module docstring); leave ``model_axis=None`` on one device or
      in pure data parallelism.

  Softmax is not applied: use ``optax.softmax_cross_entropy`` for training and
  :func:`predict_probabilities` for predictions.
  """
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dropout_before_fc: bool = False
  conv_layers: tuple[tuple[str, int, int, int, int, int], ...] = CONV_LAYERS
  avg_pool_size: int | None = None
  use_lrn: bool = True
  lrn_after_pool: bool = False
  lrn_groups: int = 2
  lrn_size: int = 5
  lrn_k: float = 2.0
  lrn_alpha: float = 1e-4
  lrn_beta: float = 0.75
  init_scheme: Literal['paper', 'caffe'] = 'paper'
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  pool_impl: PoolImpl | PoolFn | Auto = 'auto'
  lrn_impl: LrnImpl | WindowSum = 'reduce_window'
  conv_impl: ConvImpl | Auto = 'auto'
  lrn_grad: LrnGrad = 'closed_form'
  conv_weight_grad: WeightGrad | Auto = 'auto'
  conv1_impl: Conv1Impl | Auto = 'auto'
  narrow_conv_impl: NarrowConvImpl | Auto = 'auto'
  model_axis: str | None = None
  model_parallel_convs: bool = True
  model_parallel_fcs: bool = True

  def _init_fns(self, name: str):
    if self.init_scheme not in INITS:
      raise ValueError(f"AlexNet: unknown init_scheme {self.init_scheme!r}; use 'paper' or "
                       "'caffe'.")
    scheme = INITS[self.init_scheme]
    return (nn.initializers.normal(scheme['std'][name]),
            nn.initializers.constant(scheme['bias'][name]))

  def _impl_values(self) -> dict[str, Any]:
    """Every implementation option, 'auto' resolved for JAX's default backend."""
    table = CPU_IMPLS if jax.default_backend() == 'cpu' else XLA_NATIVE_IMPLS
    chosen = {name: getattr(self, name) for name in CPU_IMPLS}
    resolved = {name: table[name] if value == 'auto' else value for name, value in chosen.items()}
    return {**resolved, 'lrn_impl': self.lrn_impl, 'lrn_grad': self.lrn_grad}

  def impls(self) -> dict[str, str]:
    """Every implementation option in effect, 'auto' resolved for JAX's default backend; an
    experiment's function is named by its module and name."""
    return {name: value if isinstance(value, str) else
            f'{getattr(value, "__module__", "")}.{getattr(value, "__qualname__", repr(value))}'
            for name, value in self._impl_values().items()}

  def _norm_pool(self, x: Array, lrn_groups: int, pool_impl: PoolImpl | PoolFn) -> Array:
    def lrn(y):
      if not self.use_lrn:
        return y
      return local_response_norm(y, self.lrn_size, self.lrn_k, self.lrn_alpha, self.lrn_beta,
                                 lrn_groups, self.lrn_impl, self.lrn_grad)
    pool = lambda y: max_pool(y, POOL_WINDOW, POOL_STRIDE, impl=pool_impl)
    return lrn(pool(x)) if self.lrn_after_pool else pool(lrn(x))

  def _check_shards(self, conv_shards: int, fc_shards: int) -> None:
    """Model parallelism splits what the network allows; errors say what to change."""
    if conv_shards not in (1, 2):
      raise ValueError('Model-parallel conv layers hold one tower per device: the model axis '
                       f'must have size 2, not {conv_shards}.')
    if conv_shards > 1:
      for name, _, _, _, _, groups in self.conv_layers:
        # conv1 sees the image and conv3 gathers both towers; the others see their tower only.
        if name not in ('conv1', 'conv3') and groups % conv_shards:
          raise ValueError(f'{name} has {groups} group(s): model-parallel conv layers need '
                           'the two-tower network; set model_parallel_convs=False.')
      if self.use_lrn and self.lrn_groups % conv_shards:
        raise ValueError(f'lrn_groups={self.lrn_groups} lets LRN windows cross the towers: '
                         'model-parallel conv layers need lrn_groups=2; set '
                         'model_parallel_convs=False.')
    for name, features in FC_LAYERS + (('fc8', self.num_classes),):
      if features % fc_shards:
        raise ValueError(f'{name}: {features} outputs do not split over {fc_shards} devices.')

  def _features(self, x: Array, conv_axis: str | None, impls: dict[str, Any]) -> Array:
    """conv1 .. pool5 (and the average pool, if any): images -> the map fc6 flattens."""
    conv_shards = _axis_size(conv_axis)
    for name, features, ksize, stride, pad, groups in self.conv_layers:
      if name == 'conv3':
        x = _gather_features(x, conv_axis)  # conv3 sees both towers' maps.
      kernel_init, bias_init = self._init_fns(name)
      x = TowerConv(features // conv_shards, (ksize, ksize), (stride, stride), pad,
                    max(groups // conv_shards, 1), kernel_init, bias_init, impls['conv_impl'],
                    self.dtype, self.param_dtype, weight_grad=impls['conv_weight_grad'],
                    space_to_depth=name == 'conv1' and impls['conv1_impl'] == 'space_to_depth',
                    narrow=impls['narrow_conv_impl'], name=name)(x)
      x = nn.relu(x)
      self.sow('intermediates', f'{name}_out', x)  # features.extract's taps
      if name in NORM_POOL_AFTER:
        x = self._norm_pool(x, max(self.lrn_groups // conv_shards, 1), impls['pool_impl'])
    x = max_pool(x, POOL_WINDOW, POOL_STRIDE, impl=impls['pool_impl'])
    if self.avg_pool_size is not None:
      x = adaptive_avg_pool(x, self.avg_pool_size)
    return x

  def _classifier(self, x: Array, fc_axis: str | None, train: bool) -> Array:
    """fc6, fc7, fc8 on the flattened map: logits (model-parallel shards gathered)."""
    fc_shards = _axis_size(fc_axis)
    # One Dropout module per layer (Dropout_0, Dropout_1): each draws its own mask.
    dropout = lambda v: nn.Dropout(self.dropout_rate, deterministic=not train)(v)
    for name, features in FC_LAYERS:
      kernel_init, bias_init = self._init_fns(name)
      if self.dropout_before_fc:
        x = dropout(x)
      x = nn.Dense(features // fc_shards, kernel_init=kernel_init, bias_init=bias_init,
                   dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x)
      x = nn.relu(x)
      self.sow('intermediates', f'{name}_out', x)  # features.extract's taps
      if not self.dropout_before_fc:
        x = dropout(x)
      x = _gather_features(x, fc_axis)
    kernel_init, bias_init = self._init_fns('fc8')
    x = nn.Dense(self.num_classes // fc_shards, kernel_init=kernel_init, bias_init=bias_init,
                 dtype=self.dtype, param_dtype=self.param_dtype, name='fc8')(x)
    return _gather_features(x, fc_axis)

  @nn.compact
  def __call__(self, images: Array, train: bool = False) -> Array:
    """Logits (N, num_classes) in float32 for NHWC RGB images (N, 227, 227, 3) (or the
    preset's input size)."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'AlexNet expects NHWC RGB images (N, 227, 227, 3), got {images.shape}.')
    conv_axis = self.model_axis if self.model_parallel_convs else None
    fc_axis = self.model_axis if self.model_parallel_fcs else None
    self._check_shards(_axis_size(conv_axis), _axis_size(fc_axis))
    x = self._features(images.astype(self.dtype or self.param_dtype), conv_axis,
                       self._impl_values())
    x = _gather_features(x, conv_axis)  # fc6 sees both towers' (6, 6, 128) maps, HWC order.
    self.sow('intermediates', 'pool5_out', x)
    if self.model_axis is not None and fc_axis is not None and conv_axis is None:
      # "One weird trick": convs ran data-parallel over the model axis too; the fc layers see
      # the whole model group's batch.
      x = lax.all_gather(x, self.model_axis, axis=0, tiled=True)
    x = x.reshape((x.shape[0], -1))
    return self._classifier(x, fc_axis, train).astype(jnp.float32)


def predict_probabilities(model: AlexNet, variables, images: Array) -> Array:
  """Class probabilities: softmax of the logits, averaged over crops for (N, K, H, W, 3) input.

  A 5-D input is the paper's multi-crop test (e.g. 10 crops per image): the softmax outputs of
  the K crops are averaged, as in the paper.
  """
  if images.ndim == 5:
    n, crops = images.shape[:2]
    logits = model.apply(variables, images.reshape((n * crops,) + images.shape[2:]))
    return jax.nn.softmax(logits).reshape(n, crops, -1).mean(axis=1)
  return jax.nn.softmax(model.apply(variables, images))


def count_params(params) -> int:
  """Number of scalars in a parameter tree."""
  return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
