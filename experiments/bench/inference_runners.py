"""The inference benchmark's runners: one framework's forward pass on the prepared weights.

``setup()`` builds the network, runs it once on the timed batch and checks its logits against
the reference; ``step()`` times ``calls`` forward passes and returns the seconds per call.
"""

from __future__ import annotations

import os
import time

import numpy as np

from experiments.bench import inference
from experiments.bench import inference_weights
from experiments.bench.configs import Config


class _InferRunner:
  """What the three runners share: the prepared inputs, the check, the timing loop."""

  def __init__(self, config: Config, batch: int, workdir: str):
    self.config, self.batch, self.workdir = config, batch, workdir
    self.calls = inference.calls_per_step(batch)
    self.meta = inference_weights.load_meta(workdir)
    self.images = inference.check_images(batch, self.meta['input_size'])  # NHWC

  def _check(self, logits, build_s: float, first_s: float, **info) -> dict:
    err = inference.checked(self.config.name, np.asarray(logits), self.workdir, self.batch)
    return {'check_rel_err': err, 'compile_s': build_s, 'first_call_s': first_s,
            'calls_per_step': self.calls, **info}

  def _forward(self):
    raise NotImplementedError

  def step(self) -> tuple[float, float]:
    start = time.perf_counter()
    for _ in range(self.calls):
      self._forward()
    return (time.perf_counter() - start) / self.calls, float('nan')


class JaxInferRunner(_InferRunner):
  """``jax.jit(model.apply)`` of the preset with the model's defaults, blocking on each call."""

  def setup(self) -> dict:
    import jax  # pylint: disable=g-import-not-at-top
    from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
    from experiments.bench.model_options import model_kwargs  # pylint: disable=g-import-not-at-top
    model = model_lib.preset(self.meta['preset'], **model_kwargs(self.config.model))
    self.variables = jax.device_put({'params': inference_weights.load_params(self.workdir)})
    self.x = jax.device_put(self.images)
    start = time.perf_counter()
    self.compiled = jax.jit(model.apply).lower(self.variables, self.x).compile()
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    logits = jax.block_until_ready(self.compiled(self.variables, self.x))
    self._jax = jax
    return self._check(logits, build_s, time.perf_counter() - start, impls=model.impls(),
                       jax_version=jax.__version__, xla_flags=os.environ.get('XLA_FLAGS', ''))

  def _forward(self):
    self._jax.block_until_ready(self.compiled(self.variables, self.x))


class OrtInferRunner(_InferRunner):
  """An ONNX Runtime CPU session of the exported graph, with the configuration's options."""

  def _session_options(self):
    import onnxruntime as ort  # pylint: disable=g-import-not-at-top
    opts, so = self.config.model, ort.SessionOptions()
    if 'intra_op_num_threads' in opts:
      so.intra_op_num_threads = int(opts['intra_op_num_threads'])
    if opts.get('sequential'):
      so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if opts.get('optimization') == 'all':
      so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if 'allow_spinning' in opts:
      so.add_session_config_entry('session.intra_op.allow_spinning',
                                  '1' if opts['allow_spinning'] else '0')
    return so

  def setup(self) -> dict:
    import onnxruntime as ort  # pylint: disable=g-import-not-at-top
    path = os.path.join(self.workdir, inference_weights.ONNX_FILE)
    start = time.perf_counter()
    self.session = ort.InferenceSession(path, self._session_options(),
                                        providers=['CPUExecutionProvider'])
    build_s = time.perf_counter() - start
    self.feed = {self.session.get_inputs()[0].name:
                 np.ascontiguousarray(self.images.transpose(0, 3, 1, 2))}
    start = time.perf_counter()
    logits = self.session.run(None, self.feed)[0]
    return self._check(logits, build_s, time.perf_counter() - start,
                       onnxruntime_version=ort.__version__, session_options=self.config.model)

  def _forward(self):
    self.session.run(None, self.feed)


class TorchInferRunner(_InferRunner):
  """The PyTorch twin with the preset's options, eager or ``torch.compile``, inference mode."""

  def setup(self) -> dict:
    import torch  # pylint: disable=g-import-not-at-top
    from experiments.bench import torch_twin  # pylint: disable=g-import-not-at-top
    if self.config.mode not in ('eager', 'compile'):
      raise ValueError(f'Unknown PyTorch inference mode {self.config.mode!r}.')
    start = time.perf_counter()
    twin = torch_twin.AlexNetTwin(**self.meta['twin'])
    torch_twin.load_jax_params(twin, inference_weights.load_params(self.workdir))
    twin.eval()
    self.forward = torch.compile(twin) if self.config.mode == 'compile' else twin
    self.x = torch.from_numpy(np.ascontiguousarray(self.images.transpose(0, 3, 1, 2)))
    build_s = time.perf_counter() - start
    self._torch = torch
    start = time.perf_counter()  # torch.compile compiles during this first call.
    with torch.inference_mode():
      logits = self.forward(self.x).numpy()
    return self._check(logits, build_s, time.perf_counter() - start,
                       torch_version=torch.__version__, torch_threads=torch.get_num_threads())

  def _forward(self):
    with self._torch.inference_mode():
      self.forward(self.x)
