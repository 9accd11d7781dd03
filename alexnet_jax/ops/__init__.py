"""The kernels of ``alexnet_jax.model``, one concern a file.

``lrn``: local response normalisation; ``pool``: max and adaptive average pooling; ``conv``:
the (grouped, tower) convolution and its speed options. Like the model, they import only jax,
numpy and flax.
"""
