"""Training-step speed of alexnet_jax against its PyTorch twin, in one run, on this machine.

    python experiments/benchmark.py                      # CPU: batch 32 and 128, fp32
    python experiments/benchmark.py --readme README.md   # ... and refresh README's table
    python experiments/benchmark.py --profile-layers     # where the step's time goes, per layer
    python experiments/benchmark.py --profile-ops        # ... per HLO op of the compiled step
    python experiments/benchmark.py --gpu                # one NVIDIA GPU: bf16, batch 128..1024
    python experiments/benchmark.py --inference          # forward-only: vs ONNX Runtime, PyTorch

What one step is: forward, softmax cross-entropy, backward and the paper's SGD update (momentum
0.9, weight decay 5e-4) on a device-resident synthetic batch, fp32. JAX runs the project's own
step (``train.make_single_device_steps`` over ``optim.sgd_with_injected_lr``, one CPU device);
PyTorch runs the twin ``experiments/bench/torch_twin.py`` (same layers, ``groups=2`` convs,
per-tower LRN, dropout, ``torch.optim.SGD``) in its usual modes: eager NCHW, channels_last,
``torch.compile``.

How the configurations are compared. Each configuration lives in its own worker subprocess (so
that its peak RSS is its own), and the parent runs rounds: in each round every worker runs one
timed step while the others wait idle, in an order rotated each round (``bench/steps.py``). The
medians of the timed steps (after the warm-up steps) are reported.

The machine's fp32 matmul ceiling (a large square matmul, JAX and PyTorch each) is measured in
the same rounds; each configuration's achieved GFLOP/s counts the step's FLOPs once,
analytically from the model's layer table (2 x MACs of every conv and dense layer, forward plus
both backward products; conv1 has no input gradient) and as XLA's cost analysis of the compiled
step reports them.

Output: a markdown table on stdout (and ``--markdown``), every raw number in ``--json``
(``experiments/results/benchmark.json`` by default). Without torch (the ``compare`` extra) the
PyTorch configurations are skipped with a note and the JAX side still runs. The code is the
package ``experiments/bench/``; this script is its entry point.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from experiments.bench import cli  # noqa: E402  (after the path above)

if __name__ == '__main__':
  cli.main(description=__doc__.split('\n\n')[0])
