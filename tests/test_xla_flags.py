"""The project's XLA:CPU flags: added once, the user's value kept, and in effect when set first."""
import os
import subprocess
import sys
import textwrap

from alexnet_jax import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_recommended_flags_are_added_once_and_the_users_value_wins():
  name = xla_flags.RECOMMENDED_CPU_FLAGS[0].split('=')[0]
  flags = xla_flags.with_recommended_cpu_flags('--xla_force_host_platform_device_count=4')
  assert flags.split() == ['--xla_force_host_platform_device_count=4',
                           *xla_flags.RECOMMENDED_CPU_FLAGS]
  assert xla_flags.with_recommended_cpu_flags(flags) == flags
  mine = f'{name}=false'
  assert xla_flags.with_recommended_cpu_flags(mine) == mine


def test_flags_are_left_alone_once_jax_has_its_backends():
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()  # the test session's backends exist already
  env = {'XLA_FLAGS': '--foo=1'}
  assert xla_flags.use_recommended_cpu_flags(env) is False
  assert env == {'XLA_FLAGS': '--foo=1'}


def test_flags_set_first_remove_the_copy_of_a_donated_parameter():
  """In a fresh process: a donated weight read by a matmul and then updated is not copied."""
  script = textwrap.dedent("""
      import sys
      from alexnet_jax import xla_flags
      if sys.argv[1] == 'flags':
        assert xla_flags.use_recommended_cpu_flags()
      import jax, jax.numpy as jnp
      # The new weight overwrites the donated old one, which a matmul also reads.
      step = jax.jit(lambda w, g: (w - 0.1 * g, w @ w), donate_argnums=0)
      text = step.lower(jnp.ones((256, 256)), jnp.ones((256, 256))).compile().as_text()
      print(text.count(' copy('))
      """)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO,
         'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  counts = {}
  for mode in ('flags', 'none'):
    out = subprocess.run([sys.executable, '-c', script, mode], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    counts[mode] = int(out.stdout.split()[-1])
  assert counts == {'flags': 0, 'none': 1}, counts
