"""TensorFlow for the host-side input pipeline, configured once: it must never take an accelerator.

Modules of the pipeline import ``tf`` from here (``from alexnet_jax.host_tf import tf``), so the
guard runs before TensorFlow touches a device, whichever of them is imported first.
"""

import tensorflow as tf

try:  # JAX owns the accelerators; TF decodes images on the CPU.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TF's runtime already started; whoever started it made this choice.
  pass

__all__ = ['tf']
