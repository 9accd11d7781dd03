"""alexnet_jax: the AlexNet of Krizhevsky, Sutskever and Hinton (2012) in JAX/Flax.

Import the network alone with ``import alexnet_jax.model``; this package module imports nothing
heavy so that doing so stays light (no TensorFlow).
"""

__version__ = '0.1.0'
