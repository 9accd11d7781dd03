"""experiments/init_scales.py: its fan-in scalings against fans written out from the paper."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import model
from experiments import init_scales

# Inputs one output of each layer sees (per group on the paper's two towers), and its outputs'
# receptive-field-times-channels count, from the paper's layer sizes.
FAN_IN = {'conv1': 11 * 11 * 3, 'conv2': 5 * 5 * 48, 'conv3': 3 * 3 * 256, 'conv4': 3 * 3 * 192,
          'conv5': 3 * 3 * 192, 'fc6': 6 * 6 * 256, 'fc7': 4096, 'fc8': 4096}
FAN_OUT = {'conv1': 11 * 11 * 96, 'conv2': 5 * 5 * 256, 'conv3': 3 * 3 * 384,
           'conv4': 3 * 3 * 384, 'conv5': 3 * 3 * 256, 'fc6': 4096, 'fc7': 4096, 'fc8': 10}


@pytest.fixture(scope='module')
def shapes():
  return jax.eval_shape(lambda: model.AlexNet(num_classes=10).init(
      jax.random.key(0), jnp.zeros((1, 227, 227, 3)), train=False))['params']


# One scheme per fan mode (the others differ from these only by their gain constant).
@pytest.mark.parametrize('scheme', ['he', 'glorot'])
def test_fan_scaled_weights_have_the_schemes_std(shapes, scheme):
  gain, mode = init_scales.FAN_SCHEMES[scheme]
  params = init_scales.fan_scaled(shapes, scheme)
  for name, fan_in in FAN_IN.items():
    fan = fan_in if mode == 'fan_in' else (fan_in + FAN_OUT[name]) / 2
    kernel = np.asarray(params[name]['kernel'])
    assert kernel.shape == shapes[name]['kernel'].shape
    np.testing.assert_allclose(kernel.std(), np.sqrt(gain / fan), rtol=0.03, err_msg=name)
    assert not np.any(np.asarray(params[name]['bias']))
