"""``--profile-layers``: where the step's time goes, block by block, forward and backward.

Each block is the model's own layer (``model_blocks``), timed alone on a synthetic input of its
shape; PyTorch's column times the twin's own layers. All calls of a table are alternated.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from experiments.bench import model_blocks
from experiments.bench.report import fmt

# The blocks of one training step, in the order of the forward pass; conv blocks include their
# bias and ReLU, fc6/fc7 their ReLU and dropout, fc8 the loss; 'sgd' is the optimizer update.
PROFILE_BLOCKS = ('conv1', 'norm1', 'pool1', 'conv2', 'norm2', 'pool2', 'conv3', 'conv4',
                  'conv5', 'pool5', 'fc6', 'fc7', 'fc8+loss', 'sgd')

# Alternatives timed against each other, block by block: (block, variant name, options).
PROFILE_VARIANTS = {
    'conv_impl': [(b, impl, {'conv_impl': impl}) for b in ('conv2', 'conv4', 'conv5')
                  for impl in ('split', 'feature_group_count')],
    'conv_weight_grad': [(b, wg, {'conv_weight_grad': wg})
                         for b in ('conv2', 'conv3', 'conv4', 'conv5')
                         for wg in ('xla', 'matmul')],
    'conv1': [('conv1', f'{impl}, weight grad {wg}', {'conv1_impl': impl, 'conv_weight_grad': wg})
              for impl in ('direct', 'space_to_depth') for wg in ('xla', 'matmul')],
    'lrn_impl': [(b, impl, {'lrn_impl': impl}) for b in ('norm1', 'norm2')
                 for impl in ('reduce_window', 'matmul', 'shifted_slices', 'cumsum')],
    'lrn_grad': [(b, grad, {'lrn_grad': grad}) for b in ('norm1', 'norm2')
                 for grad in ('autodiff', 'closed_form')],
    'pool_impl': [(b, impl, {'pool_impl': impl}) for b in ('pool1', 'pool2', 'pool5')
                  for impl in ('strided_argmax', 'strided_slices', 'reduce_window')],
}


def _model(options: dict):
  """AlexNet with ``options`` over its defaults (unset options: the model's own 'auto'; the
  experiment's formulations by name, see ``model_options``)."""
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from experiments.bench.model_options import model_kwargs  # pylint: disable=g-import-not-at-top
  return model_lib.AlexNet(**model_kwargs(options))


def _sgd_block(model):
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import optim  # pylint: disable=g-import-not-at-top
  from alexnet_jax import steps  # pylint: disable=g-import-not-at-top
  tx = optim.sgd_with_injected_lr(0.01)
  state = steps.jit_create_train_state(model, tx)(jax.random.key(0))
  grads = jax.tree_util.tree_map(lambda p: p * 1e-3, state.params)

  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  fn = jax.jit(update)
  return fn, fn, (state.params, state.opt_state, grads)


def _layer_block(block: str, model, batch: int, keys):
  """(f, args, argnums) of a conv or dense block: the model's own module, then its ReLU, ..."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from alexnet_jax import steps  # pylint: disable=g-import-not-at-top
  name = 'fc8' if block == 'fc8+loss' else block
  module, in_shape, _ = model_blocks.capture_layers(model, batch)[name]
  normal = lambda s, scale: jax.random.normal(next(keys), s, jnp.float32) * scale
  x = normal(in_shape, 10.0)
  params = jax.eval_shape(module.init, jax.random.key(0), x)['params']
  kernel = normal(params['kernel'].shape, 0.01)
  bias = jnp.zeros(params['bias'].shape)
  apply = model_blocks.layer_fn(module)
  if block.startswith('fc'):
    labels = jax.random.randint(next(keys), (batch,), 0, model.num_classes)
    mask_key = next(keys)

  def f(kernel, bias, x):
    y = apply(kernel, bias, x)
    if block == 'fc8+loss':
      return jnp.mean(steps.cross_entropy(y, labels))
    y = jax.nn.relu(y)
    if block.startswith('fc'):
      keep = jax.random.bernoulli(mask_key, 0.5, y.shape)
      y = jnp.where(keep, y / 0.5, 0.0)
    return y
  return f, (kernel, bias, x), ((0, 1) if block == 'conv1' else (0, 1, 2))


def _vjp_fn(f, argnums, cotangent):
  """The forward and backward pass of ``f`` for the arguments ``argnums``, one cotangent."""
  import jax  # pylint: disable=g-import-not-at-top

  def fwd_bwd(*a):
    _, vjp = jax.vjp(lambda *sel: f(*[sel[argnums.index(i)] if i in argnums else a[i]
                                      for i in range(len(a))]),
                     *[a[i] for i in argnums])
    return vjp(cotangent)
  return fwd_bwd


def jax_block(block: str, batch: int, options: dict):
  """(forward fn, forward+backward fn, args) of one block of the JAX model, jitted."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from alexnet_jax import unrolled_threefry  # pylint: disable=g-import-not-at-top
  model = _model(options)
  if block == 'sgd':
    return _sgd_block(model)
  # The inputs' draws (each new shape compiles a hash: 1 s faster unrolled, the same bits); the
  # blocks are jitted below and compile with JAX's own hash, as the train step does.
  with unrolled_threefry.on_cpu():
    keys = iter(jax.random.split(jax.random.key(0), 8))
    if block.startswith(('norm', 'pool')):
      shape = model_blocks.block_shapes(model, batch)[block]
      fn = model_blocks.lrn_fn(model) if block.startswith('norm') else model_blocks.pool_fn(model)
      f, args, argnums = fn, (jax.random.normal(next(keys), shape, jnp.float32) * 10.0,), (0,)
    else:
      f, args, argnums = _layer_block(block, model, batch, keys)
    out = jax.eval_shape(f, *args)
    cotangent = jax.random.normal(next(keys), out.shape, out.dtype)
  return jax.jit(f), jax.jit(_vjp_fn(f, argnums, cotangent)), args


def torch_block(block: str, batch: int, shape: tuple | None):
  """(forward fn, forward+backward fn) of one block of the PyTorch twin, eager NCHW.

  ``shape`` is the block's NHWC input shape (batch included), from the JAX model.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from experiments.bench import torch_twin  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  twin = torch_twin.AlexNetTwin()
  if block == 'sgd':
    opt = torch_twin.make_sgd(twin)
    for p in twin.parameters():
      p.grad = torch.randn_like(p) * 1e-3
    return opt.step, opt.step
  if len(shape) == 4:
    shape = (shape[0], shape[3], shape[1], shape[2])
  x = torch.randn(shape) * 10.0
  name = 'fc8' if block == 'fc8+loss' else block
  layer = twin.layers().get(name)
  params = list(layer.parameters()) if layer is not None else []
  if block.startswith('conv'):
    f = lambda x: F.relu(layer(x))
  elif block.startswith(('norm', 'pool')):
    f = twin.norm if block.startswith('norm') else twin.pool
  elif block == 'fc8+loss':
    labels = torch.randint(0, 1000, (batch,))
    f = lambda x: F.cross_entropy(layer(x), labels)
  else:
    f = lambda x: F.dropout(F.relu(layer(x)), 0.5, training=True)
  x.requires_grad_(block != 'conv1')

  def forward():
    with torch.no_grad():
      f(x)

  def fwd_bwd():
    for p in params:
      p.grad = None
    x.grad = None
    y = f(x)
    y.backward(torch.ones_like(y))
  return forward, fwd_bwd


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, gap_s: float = 0.05,
                        warmup: int = 1) -> dict[str, float]:
  """Median seconds of each zero-argument call, calls alternated round-robin."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  names = list(fns)
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      time.sleep(gap_s)
      start = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def _jax_call(fn, args):
  import jax  # pylint: disable=g-import-not-at-top
  return lambda: jax.block_until_ready(fn(*args))


def _block_calls(batch: int, options: dict, with_torch: bool) -> dict:
  """(framework, block, 'fwd' or 'fwd+bwd') -> a zero-argument call, for every block."""
  shapes = model_blocks.block_shapes(_model(options), batch)
  fns = {}
  for block in PROFILE_BLOCKS:
    fwd, fwd_bwd, args = jax_block(block, batch, options)
    fns[('jax', block, 'fwd')] = _jax_call(fwd, args)
    if block != 'sgd':
      fns[('jax', block, 'fwd+bwd')] = _jax_call(fwd_bwd, args)
    if with_torch:
      tf, tfb = torch_block(block, batch, shapes.get(block))
      fns[('torch', block, 'fwd')] = tf
      if block != 'sgd':
        fns[('torch', block, 'fwd+bwd')] = tfb
  return fns


def _variants(batch: int, options: dict, groups: Sequence[str], repeats: int) -> dict:
  variants = {}
  for group in groups:
    vfns = {}
    for block, name, opts in PROFILE_VARIANTS[group]:
      _, fwd_bwd, args = jax_block(block, batch, {**options, **opts})
      vfns[(block, name)] = _jax_call(fwd_bwd, args)
    vmed = interleaved_medians(vfns, repeats)
    variants[group] = [{'block': b, 'variant': n, 'fwd+bwd_ms': t * 1e3}
                       for (b, n), t in vmed.items()]
  return variants


def profile_layers(batch: int, options: dict, repeats: int, with_torch: bool,
                   variant_groups: Sequence[str] | None = None) -> dict:
  """Per-block forward and forward+backward medians (ms) of JAX (and PyTorch eager), and the
  variant groups of :data:`PROFILE_VARIANTS`, all calls of a table alternated."""
  medians = interleaved_medians(_block_calls(batch, options, with_torch), repeats)
  frameworks = ('jax', 'torch') if with_torch else ('jax',)
  layers = [{'block': block, **{f'{fw}_{what}_ms': medians[(fw, block, what)] * 1e3
                                for fw in frameworks for what in ('fwd', 'fwd+bwd')
                                if (fw, block, what) in medians}}
            for block in PROFILE_BLOCKS]
  groups = variant_groups if variant_groups is not None else list(PROFILE_VARIANTS)
  return {'batch': batch, 'options': options, 'repeats': repeats, 'layers': layers,
          'variants': _variants(batch, options, groups, repeats)}


def profile_markdown(prof: dict) -> str:
  layers = prof['layers']
  cols = [k for k in layers[0] if k.endswith('_ms')]
  lines = [f'Per-block median ms, batch {prof["batch"]}, fp32, {prof["repeats"]} alternated '
           f'calls; JAX options {prof["options"] or "defaults"}.', '',
           '| block | ' + ' | '.join(c[:-3].replace('_', ' ') for c in cols) + ' |',
           '|---|' + '---|' * len(cols)]
  totals = dict.fromkeys(cols, 0.0)
  for row in layers:
    cells = []
    for c in cols:
      value = row.get(c)
      cells.append(fmt(value, '.1f'))
      if value is not None and (c.endswith('fwd+bwd_ms') or row['block'] == 'sgd'):
        totals[c] += value
    lines.append(f'| {row["block"]} | ' + ' | '.join(cells) + ' |')
  lines.append('| sum fwd+bwd + sgd | ' + ' | '.join(
      fmt(totals[c], '.1f') if c.endswith('fwd+bwd_ms') else '' for c in cols) + ' |')
  for group, rows in prof['variants'].items():
    lines += ['', f'Variants ({group}), forward+backward ms:', '',
              '| block | variant | ms |', '|---|---|---|']
    lines += [f'| {r["block"]} | {r["variant"]} | {r["fwd+bwd_ms"]:.1f} |' for r in rows]
  return '\n'.join(lines) + '\n'
