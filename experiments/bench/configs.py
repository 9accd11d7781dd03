"""What the benchmark can time: a framework, its options and a short name (``--configs``)."""

from __future__ import annotations

import dataclasses
import json
import sys

from alexnet_jax import xla_flags  # No JAX import: the workers choose the flags.

# Every step trains on the same synthetic batch: the paper's rate (0.01) makes the loss diverge
# to inf/NaN within a few dozen steps there. The rate is a run-time value in both frameworks
# (an injected hyperparameter in JAX), so a small one costs exactly what the paper's does.
LEARNING_RATE = 1e-4


@dataclasses.dataclass(frozen=True)
class Config:
  """One thing to time: a framework, its options, and a short name."""
  name: str
  kind: str                      # 'jax', 'torch', 'matmul_jax', 'matmul_torch'; see runners
  label: str
  # AlexNet options (JAX), by name; model_options.model_kwargs makes them keyword arguments.
  model: dict = dataclasses.field(default_factory=dict)
  mode: str = 'eager'            # torch: 'eager', 'channels_last', 'compile'
  xla_flags: str = ''            # extra XLA_FLAGS for this JAX worker
  donate: bool = True            # JAX: the step reuses the donated state's buffers
  env: dict = dataclasses.field(default_factory=dict)  # extra environment of the worker

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


PRESETS: dict[str, Config] = {c.name: c for c in (
    Config('matmul_jax', 'matmul_jax', 'fp32 matmul, JAX (ceiling)'),
    Config('matmul_torch', 'matmul_torch', 'fp32 matmul, PyTorch (ceiling)'),
    Config('torch_eager', 'torch', 'PyTorch eager NCHW', mode='eager'),
    Config('torch_channels_last', 'torch', 'PyTorch channels_last', mode='channels_last'),
    Config('torch_compile', 'torch', 'PyTorch torch.compile', mode='compile'),
    # What `python -m alexnet_jax.main` runs: the model's defaults and the project's XLA flags.
    Config('jax_default', 'jax', 'JAX, model defaults and XLA flags (the main job)',
           xla_flags=' '.join(xla_flags.RECOMMENDED_CPU_FLAGS)),
    # The starting points, every implementation option spelled out.
    Config('jax_fgc', 'jax', 'JAX, feature_group_count=2, jnp (shifted-slices) LRN',
           model={'conv_impl': 'feature_group_count', 'lrn_impl': 'shifted_slices',
                  'pool_impl': 'reduce_window', 'lrn_grad': 'autodiff',
                  'conv_weight_grad': 'xla', 'conv1_impl': 'direct'}),
    Config('jax_split_rw', 'jax', 'JAX, groups as two convs, LRN by reduce_window (before)',
           model={'conv_impl': 'split', 'lrn_impl': 'reduce_window',
                  'pool_impl': 'strided_slices', 'lrn_grad': 'autodiff',
                  'conv_weight_grad': 'xla', 'conv1_impl': 'direct'}),
    Config('jax_no_xla_flags', 'jax', 'JAX, model defaults, without the project\'s XLA flags'),
    Config('jax_bf16', 'jax', 'JAX, model defaults, bf16 compute', model={'dtype': 'bfloat16'}),
    Config('jax_no_donation', 'jax', 'JAX, model defaults, state not donated', donate=False),
)}
DEFAULT_CONFIGS = ('matmul_jax', 'matmul_torch', 'torch_eager', 'torch_channels_last',
                   'torch_compile', 'jax_default', 'jax_split_rw')


def parse_config(text: str) -> Config:
  """A preset name, or ``name={json}`` with the Config fields (``kind`` and ``label`` needed)."""
  if text in PRESETS:
    return PRESETS[text]
  if '=' in text:
    name, spec = text.split('=', 1)
    fields = json.loads(spec)
    base = PRESETS.get(fields.pop('base', ''), None)
    if base is not None:
      fields = {**base.to_json(), **fields, 'name': name,
                'model': {**base.model, **fields.get('model', {})}}
    fields['name'] = name
    return Config(**fields)
  raise SystemExit(f'Unknown configuration {text!r}: use one of {sorted(PRESETS)} or '
                   'name={"kind": ..., "label": ..., "model": {...}, "xla_flags": ...} '
                   '(or {"base": "<preset>", ...}).')


def user_error(message: str):
  """Ends the run with ``error: <message>`` and exit status 2 (a mistake in the command)."""
  print(f'error: {message}', file=sys.stderr)
  raise SystemExit(2)


def torch_available() -> bool:
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True
