"""A PyTorch twin of ``alexnet_jax.model.AlexNet``: the same network, layer for layer.

For the speed comparisons (``experiments/benchmark.py``: training and inference) and as an
independent check of the JAX model (``tests/test_torch_twin.py``: with the same weights both
give the same logits and gradients). Needs the ``compare`` extra (``pip install -e
'.[compare]'``, ``torch==2.13.0``). It lives beside its users, outside the installed package;
it imports no JAX (a PyTorch worker's memory is PyTorch's alone).

The twin is written the way a PyTorch user would write the paper's network, NCHW:

* grouped convolutions with ``nn.Conv2d(groups=2)`` (conv2, conv4, conv5);
* the paper's LRN is ``nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)``: PyTorch divides
  alpha by ``size``, so ``5e-4 / 5 = 1e-4`` is the paper's alpha on a *sum* of squares;
* other LRN constants (``lrn_k``, ``lrn_alpha`` on a sum of squares, as in
  ``alexnet_jax.model.AlexNet``): Caffe's bvlc_alexnet is ``k=1`` and alpha ``1e-4 / 5``, i.e.
  ``nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1)``;
* with ``lrn_groups=2`` (the paper's towers) the LRN is applied to each half of the channels
  separately and the halves concatenated: a window of ``nn.LocalResponseNorm`` on all channels
  would mix the two towers' maps at the boundary, which the paper's GPUs never did;
* conv -> ReLU -> LRN -> max-pool (the paper's order) or conv -> ReLU -> pool -> LRN
  (``lrn_after_pool=True``, the seed's and CaffeNet's);
* dropout 0.5 after the ReLUs of fc6 and fc7; logits out (softmax in the loss).

fc6's input is flattened in PyTorch's native CHW order; :func:`load_jax_params` permutes fc6's
weight columns from the JAX model's HWC order, so the two networks compute the same function.

:func:`make_sgd` is ``torch.optim.SGD(momentum=0.9)`` with weight decay 5e-4 on the weights only
(the project's default: biases are not decayed). PyTorch's rule is ``v <- 0.9 v + (g + wd w);
w <- w - lr v`` (the rate after the momentum), the paper's ``v <- 0.9 v - lr (g + wd w);
w <- w + v`` (the rate before): identical while the rate is constant, and the same arithmetic
cost per step, which is all the benchmark needs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# (name, in, out, kernel, stride, padding, groups): the paper's conv layers, written the PyTorch
# way (tests/test_torch_twin.py checks them against alexnet_jax.model.CONV_LAYERS).
CONV_LAYERS = (
    ('conv1', 3, 96, 11, 4, 0, 1),
    ('conv2', 96, 256, 5, 1, 2, 2),
    ('conv3', 256, 384, 3, 1, 1, 1),
    ('conv4', 384, 384, 3, 1, 1, 2),
    ('conv5', 384, 256, 3, 1, 1, 2),
)
# The paper's initial biases (weights are all N(0, 0.01)), as in alexnet_jax.model.INITS.
PAPER_BIASES = {'conv1': 0., 'conv2': 1., 'conv3': 0., 'conv4': 1., 'conv5': 1., 'fc6': 1.,
                'fc7': 1., 'fc8': 0.}


class GroupedLRN(nn.Module):
  """PyTorch's ``LocalResponseNorm`` applied to each of ``groups`` contiguous channel groups.

  With the paper's constants (``size=5, alpha=1e-4, k=2, beta=0.75`` on a sum of squares) this
  is ``alexnet_jax.model.local_response_norm(..., groups=groups)`` in NCHW.
  """

  def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
               groups: int = 2):
    super().__init__()
    # PyTorch divides alpha by size: multiply the paper's alpha back.
    self.norm = nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)
    self.groups = groups

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.groups == 1:
      return self.norm(x)
    return torch.cat([self.norm(part) for part in x.chunk(self.groups, dim=1)], dim=1)


class AlexNetTwin(nn.Module):
  """The paper's AlexNet in PyTorch, NCHW input (N, 3, 227, 227) -> logits (N, num_classes).

  Arguments mirror ``alexnet_jax.model.AlexNet``'s of the same names; ``input_size`` (fc6's
  input follows it) is the benchmark's ``--image-size``.
  """

  def __init__(self, num_classes: int = 1000, dropout_rate: float = 0.5, use_lrn: bool = True,
               lrn_after_pool: bool = False, lrn_groups: int = 2, lrn_size: int = 5,
               lrn_k: float = 2.0, lrn_alpha: float = 1e-4, lrn_beta: float = 0.75,
               input_size: int = 227):
    super().__init__()
    for name, cin, cout, ksize, stride, pad, groups in CONV_LAYERS:
      self.add_module(name, nn.Conv2d(cin, cout, ksize, stride, pad, groups=groups))
    self.pool = nn.MaxPool2d(3, 2)
    self.norm = (GroupedLRN(lrn_size, lrn_alpha, lrn_beta, lrn_k, groups=lrn_groups) if use_lrn
                 else nn.Identity())
    self.lrn_after_pool = lrn_after_pool
    # fc6's width follows the input: pool5's side by PyTorch's own shape rules, on a meta copy
    # of the layers so far (nothing is computed, and the JAX model's table is not imported).
    probe = torch.empty(1, 3, input_size, input_size, device='meta')
    self.fc6_side = copy.deepcopy(self).to('meta').features(probe).shape[-1]
    self.fc6 = nn.Linear(self.fc6_side * self.fc6_side * 256, 4096)
    self.fc7 = nn.Linear(4096, 4096)
    self.fc8 = nn.Linear(4096, num_classes)
    self.dropout = nn.Dropout(dropout_rate)
    self.reset_parameters()

  @torch.no_grad()
  def reset_parameters(self) -> None:
    """The paper's init: every weight N(0, 0.01), biases 1 on conv2/4/5 and fc6/7, else 0."""
    for name, layer in self.layers().items():
      layer.weight.normal_(0.0, 0.01)
      layer.bias.fill_(PAPER_BIASES[name])

  def layers(self) -> dict[str, nn.Module]:
    """The eight weight layers by the JAX model's names, conv1 .. fc8."""
    return {name: getattr(self, name) for name in PAPER_BIASES}

  def _norm_pool(self, x: torch.Tensor) -> torch.Tensor:
    if self.lrn_after_pool:
      return self.norm(self.pool(x))
    return self.pool(self.norm(x))

  def features(self, x: torch.Tensor) -> torch.Tensor:
    """conv1 .. pool5: images -> the maps fc6 flattens."""
    x = self._norm_pool(F.relu(self.conv1(x)))
    x = self._norm_pool(F.relu(self.conv2(x)))
    x = F.relu(self.conv3(x))
    x = F.relu(self.conv4(x))
    return self.pool(F.relu(self.conv5(x)))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = torch.flatten(self.features(x), 1)  # CHW order; load_jax_params permutes fc6 to match.
    x = self.dropout(F.relu(self.fc6(x)))
    x = self.dropout(F.relu(self.fc7(x)))
    return self.fc8(x)


def make_sgd(model: nn.Module, learning_rate: float = 0.01, momentum: float = 0.9,
             weight_decay: float = 5e-4) -> torch.optim.SGD:
  """Momentum SGD, weight decay on weights only (see the module docstring for the rule)."""
  weights = [p for n, p in model.named_parameters() if not n.endswith('bias')]
  biases = [p for n, p in model.named_parameters() if n.endswith('bias')]
  # foreach: the multi-tensor update, PyTorch's fast path (its CPU default is a per-tensor loop).
  return torch.optim.SGD([{'params': weights, 'weight_decay': weight_decay},
                          {'params': biases, 'weight_decay': 0.0}],
                         lr=learning_rate, momentum=momentum, foreach=True)


def fc6_hwc_to_chw(kernel: np.ndarray, height: int = 6, width: int = 6) -> np.ndarray:
  """Reorders the rows of fc6's (H*W*C, out) kernel from HWC to CHW flatten order."""
  channels = kernel.shape[0] // (height * width)
  return (kernel.reshape(height, width, channels, -1).transpose(2, 0, 1, 3)
          .reshape(kernel.shape[0], -1))


def load_jax_params(model: AlexNetTwin, params: Mapping[str, Any]) -> AlexNetTwin:
  """Copies a JAX parameter tree (``alexnet_jax.model`` layout) into ``model``, in place.

  Conv kernels HWIO -> OIHW (a grouped kernel ``(kh, kw, in/2, out)`` is exactly PyTorch's
  ``(out, in/2, kh, kw)`` transposed: both give output channels ``[0:out/2]`` the first half
  of the input); dense kernels ``(in, out)`` -> ``(out, in)``; fc6's rows from the JAX HWC
  flatten order to PyTorch's CHW.
  """
  with torch.no_grad():
    for name, layer in model.layers().items():
      kernel = np.asarray(params[name]['kernel'], dtype=np.float32)
      if kernel.ndim == 4:
        weight = kernel.transpose(3, 2, 0, 1)
      else:
        weight = (fc6_hwc_to_chw(kernel, model.fc6_side, model.fc6_side) if name == 'fc6'
                  else kernel).T
      if tuple(weight.shape) != tuple(layer.weight.shape):
        raise ValueError(f'{name}: JAX kernel {kernel.shape} does not fit the twin\'s weight '
                         f'{tuple(layer.weight.shape)}.')
      layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
      layer.bias.copy_(torch.from_numpy(np.asarray(params[name]['bias'], dtype=np.float32)))
  return model


def torch_grads_as_jax(model: AlexNetTwin) -> dict[str, dict[str, np.ndarray]]:
  """The twin's ``.grad``s in the JAX parameter layout (the inverse of :func:`load_jax_params`)."""
  out = {}
  for name, layer in model.layers().items():
    grad = layer.weight.grad.detach().cpu().numpy()
    if grad.ndim == 4:
      kernel = grad.transpose(2, 3, 1, 0)
    else:
      kernel = grad.T
      if name == 'fc6':
        # CHW rows back to HWC: the inverse permutation of fc6_hwc_to_chw.
        side = model.fc6_side
        kernel = (kernel.reshape(256, side, side, -1).transpose(1, 2, 0, 3)
                  .reshape(kernel.shape[0], -1))
    out[name] = {'kernel': kernel, 'bias': layer.bias.grad.detach().cpu().numpy()}
  return out
