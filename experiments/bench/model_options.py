"""A configuration's AlexNet options (JSON: names and strings) as ``AlexNet``'s keyword arguments.

The model keeps the implementations a default picks and XLA's own path of each op; the ones
only this benchmark times are here (the max-pool of strided slices) or in
``experiments/lrn_formulations.py`` (the other LRN window sums), and a configuration names them
like the model's own: ``{"lrn_impl": "matmul", "pool_impl": "strided_slices"}``.
"""

from __future__ import annotations


def max_pool_strided_slices(x, window: int, stride: int):
  """The max-pool as the elementwise max of the window*window strided views.

  Its autodiff gradient is a chain of fused selects instead of XLA:CPU's select-and-scatter
  (experiments/PERF.md, attempt 4; superseded by the model's 'strided_argmax'). Ties share the
  gradient instead of going to the first maximum (measure zero for float activations).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from alexnet_jax.ops.pool import pool_views  # pylint: disable=g-import-not-at-top
  result = None
  for view in pool_views(x, window, stride):
    result = view if result is None else jnp.maximum(result, view)
  return result


def experiment_impls() -> dict[str, dict]:
  """option -> {name: function} of the formulations the model takes only as functions."""
  from experiments import lrn_formulations  # pylint: disable=g-import-not-at-top
  lrn = {name: fn for name, fn in lrn_formulations.WINDOW_SUMS.items() if callable(fn)}
  return {'lrn_impl': lrn, 'pool_impl': {'strided_slices': max_pool_strided_slices}}


def jax_dtype(name):
  """A dtype name of a configuration (or None, "none") as a JAX dtype."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return None if name in (None, 'none') else jnp.dtype(name)


def model_kwargs(options: dict) -> dict:
  """``options`` with the dtype as a JAX dtype and the experiment's formulations as functions;
  the model's own values pass through unchanged."""
  kwargs = dict(options)
  if 'dtype' in kwargs:
    kwargs['dtype'] = jax_dtype(kwargs['dtype'])
  for option, functions in experiment_impls().items():
    if kwargs.get(option) in functions:
      kwargs[option] = functions[kwargs[option]]
  return kwargs
