"""Refuses a config whose numbers cannot work, before any work starts.

Every number of the shipped configs has a rule here (``RULES``: dotted field -> check); a value
that breaks it is a :class:`ConfigValueError` naming the field, what it must be and the value,
raised before the dataset is read or anything compiles. Without these checks a count of 0 ends
in a ``ZeroDivisionError`` after an epoch of training, and a negative batch size gets the
advice to lower it. Upper bounds are where a larger value cannot run on any machine (a batch
of a million images, an LRN window wider than any layer); the rest is left to the user.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from typing import Any

import ml_collections

# No machine holds a million 227x227 images at once.
MAX_BATCH = 1 << 20
MAX_THREADS = 4096
MAX_IMAGE_SIDE = 8192


class ConfigValueError(ValueError):
  """A config value that cannot work; the message names the field and what it must be."""


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_in(low: int, high: int | None = None, also: tuple = (), what: str = '') -> Callable:
  def check(value) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (
        value in also or (value >= low and (high is None or value <= high)))
    if ok:
      return None
    bound = f'an integer >= {low}' if high is None else f'an integer from {low} to {high}'
    extra = ''.join(f' or {a}' for a in also)
    return bound + extra + (f' ({what})' if what else '')
  return check


def _float_in(low: float, high: float | None = None, low_open: bool = False,
              high_open: bool = False) -> Callable:
  def check(value) -> str | None:
    ok = _number(value) and (value > low if low_open else value >= low) and (
        high is None or (value < high if high_open else value <= high))
    if ok:
      return None
    left = '(' if low_open else '['
    right = ')' if high_open else ']'
    return (f'a finite number in {left}{low:g}, {high:g}{right}' if high is not None else
            f'a finite number {">" if low_open else ">="} {low:g}')
  return check


def _numbers(count: int, low: float | None = None) -> Callable:
  def check(value) -> str | None:
    values = list(value) if isinstance(value, (tuple, list)) else []
    if len(values) == count and all(_number(v) and (low is None or v >= low) for v in values):
      return None
    return f'{count} finite numbers' + (f' >= {low:g}' if low is not None else '')
  return check


def _matrix3(value) -> str | None:
  rows = list(value) if isinstance(value, (tuple, list)) else []
  if len(rows) == 3 and all(_numbers(3)(row) is None for row in rows):
    return None
  return '3 rows of 3 finite numbers'


def _epochs(value) -> str | None:
  values = list(value) if isinstance(value, (tuple, list)) else [None]
  if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
    return None
  return 'a list of integers >= 0'


def _odd_window(value) -> str | None:
  if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1023 and value % 2:
    return None
  return 'an odd integer from 1 to 1023 (a window centred on each channel)'


_POSITIVE = _int_in(1)
_BATCH = _int_in(1, MAX_BATCH)
_THREADS = _int_in(1, MAX_THREADS, also=(-1,), what='-1: let tf.data choose')

RULES: dict[str, Callable[[Any], str | None]] = {
    'seed': _int_in(0, 2**31 - 1),
    'batch_size': _BATCH,
    'num_epochs': _POSITIVE,
    'max_steps': _int_in(1, also=(-1,), what='-1: num_epochs decides'),
    'checkpoint.every_steps': _POSITIVE,
    'checkpoint.keep': _POSITIVE,
    'log_every_steps': _POSITIVE,
    'eval.every_epochs': _POSITIVE,
    'eval.batch_size': _BATCH,
    'eval.max_batches': _int_in(1, also=(-1,), what='-1: the whole validation split'),
    'mesh.data': _int_in(1, also=(-1,), what='-1: all remaining devices'),
    'mesh.model': _POSITIVE,
    'model.num_classes': _int_in(0, what='0: from the dataset'),
    'model.dropout_rate': _float_in(0.0, 1.0, high_open=True),
    'model.lrn_size': _odd_window,
    'model.lrn_k': _float_in(0.0, low_open=True),
    'model.lrn_alpha': _float_in(0.0),
    'model.lrn_beta': _float_in(0.0),
    'data.resize_size': _int_in(1, MAX_IMAGE_SIDE),
    'data.crop_size': _int_in(1, MAX_IMAGE_SIDE),
    'data.input_scale': _float_in(0.0, low_open=True),
    'data.mean_rgb': _numbers(3),
    'data.pca_eigval': _numbers(3, low=0.0),
    'data.pca_eigvec': _matrix3,
    'data.pca_alpha_std': _float_in(0.0),
    'data.shuffle_buffer': _POSITIVE,
    'data.num_parallel_calls': _THREADS,
    'data.prefetch': _int_in(0, MAX_THREADS, also=(-1,), what='-1: let tf.data choose'),
    'data.device_prefetch': _int_in(0, 64, what='batches placed on the devices ahead'),
    'data.threadpool_size': _int_in(0, MAX_THREADS, what='0: tf.data\'s default'),
    'data.val_fraction': _float_in(0.0, 1.0, low_open=True, high_open=True),
    'optim.learning_rate': _float_in(0.0, low_open=True),
    'optim.momentum': _float_in(0.0, 1.0, high_open=True),
    'optim.weight_decay': _float_in(0.0),
    'optim.plateau_patience': _POSITIVE,
    'optim.plateau_factor': _float_in(0.0, 1.0, low_open=True),
    'optim.plateau_max_decays': _int_in(0),
    'optim.plateau_min_delta': _float_in(0.0),
    'optim.step_epochs': _epochs,
    'optim.step_factor': _float_in(0.0, low_open=True),
}


def get_field(config: ml_collections.ConfigDict, dotted: str, default=None):
  """``config.a.b`` for ``'a.b'`` (``default`` when a part is missing)."""
  value = config
  for key in dotted.split('.'):
    if not hasattr(value, 'keys') or key not in value:
      return default
    value = value[key]
  return value


def smallest_crop() -> int:
  """The smallest input side for which every convolution and max-pool of the paper's layer
  table leaves at least one pixel (67: conv1 15, pool1 7, pool2 3, pool5 1).

  A search over ``model.feature_sides``: every side grows with the input, so the first input
  that works is the answer, and the sides are small integers.
  """
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  return next(side for side in itertools.count(1)
              if min(model_lib.feature_sides(side).values()) >= 1)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`ConfigValueError` for the first field that breaks its rule."""
  for field, rule in RULES.items():
    value = get_field(config, field, default=_MISSING)
    if value is _MISSING:
      continue  # a user's own config without the field: the code reading it names it
    problem = rule(value)
    if problem is not None:
      raise ConfigValueError(f'config.{field} must be {problem}, not {value!r}; set '
                             f'--config.{field}.')
  folder = get_field(config, 'data.folder')
  if get_field(config, 'data.source') == 'folder' and folder and os.path.isfile(
      os.path.expanduser(folder)):
    raise ConfigValueError(f'config.data.folder {folder} is a file, not a directory; set '
                           '--config.data.folder to a folder of class subfolders.')
  crop, resize = get_field(config, 'data.crop_size'), get_field(config, 'data.resize_size')
  if crop is not None and resize is not None and crop > resize:
    raise ConfigValueError(f'config.data.crop_size ({crop}) is larger than config.data.'
                           f'resize_size ({resize}), the side its crops are cut from; lower '
                           'the crop or raise the resize.')
  if crop is not None and crop < smallest_crop():
    raise ConfigValueError(f'config.data.crop_size {crop} is too small for the network: its '
                           f'convolutions and poolings need at least {smallest_crop()} pixels '
                           '(the paper uses 227).')


_MISSING = object()
