"""Test setup: 4 fake CPU devices (so 1-, 2- and 2x2-device meshes can be tested), a quiet TF, and
the repository root on sys.path (for experiments/bench).

This runs before any test module imports JAX; XLA reads the flag when its CPU backend starts.
"""
import os
import sys

# The experiments' code (experiments/bench: the benchmark and the PyTorch twin) is not part of
# the installed package: the tests import it from the repository root.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after the flags above)

jax.config.update('jax_enable_x64', False)


def pytest_report_header(config):
  return f'jax {jax.__version__}, devices: {jax.devices()}'
