"""The benchmark behind ``python experiments/benchmark.py`` (see that script for the modes).

One concern a module:

* ``configs``: what can be timed (``Config``, the presets, ``--configs`` parsing);
* ``flops``: the analytic FLOP count from the model's layer table, and XLA's count;
* ``model_options``: a configuration's AlexNet options as keyword arguments, and the
  formulations only the benchmark times (the strided-slices max-pool; the LRN window sums of
  ``experiments/lrn_formulations.py``), named like the model's own;
* ``runners``: one configuration in-process (the JAX step, the PyTorch twin, a matmul);
* ``workers``: a configuration in its own process, driven over a pipe;
* ``steps``: the alternating rounds and the training-step benchmark;
* ``report``: markdown tables, README sections, output files;
* ``model_blocks``: the model's own layers, captured from a traced call, for the profiles;
* ``profile_layers`` / ``profile_ops``: where the step's time goes, per block and per HLO op;
* ``gpu``: the single-GPU mode;
* ``inference`` (with ``inference_weights``, ``inference_runners``): forward-only inference
  against ONNX Runtime and PyTorch on the same weights;
* ``torch_twin``: the PyTorch twin of the network (also the tests' independent reference);
* ``cli``: the command line.
"""
