"""Named activations of an AlexNet: for transfer learning, perceptual metrics, probing.

    from alexnet_jax import features, weights
    model, variables = weights.load('bvlc_alexnet.caffemodel')
    feats = features.extract(model, variables, model_lib.preprocess('bvlc', pixels))
    feats['fc7'].shape   # (N, 4096)

The taps (:data:`FEATURE_NAMES`), NHWC for the maps:

=====  ====================================================  =====================
name   what                                                  bvlc at 227 / torchvision at 224
=====  ====================================================  =====================
conv1  conv1 after its ReLU (before LRN and pooling)         (55, 55, 96) / (55, 55, 64)
conv2  conv2 after its ReLU                                  (27, 27, 256) / (27, 27, 192)
conv3  conv3 after its ReLU                                  (13, 13, 384)
conv4  conv4 after its ReLU                                  (13, 13, 384) / (13, 13, 256)
conv5  conv5 after its ReLU (before pool5)                   (13, 13, 256)
pool5  pool5 (and the adaptive average pool, if any)         (6, 6, 256)
fc6    fc6 after its ReLU (dropout is off outside training)  (4096,)
fc7    fc7 after its ReLU                                    (4096,)
=====  ====================================================  =====================

The network sows each of them into Flax's ``'intermediates'`` collection as ``<name>_out`` (a
layer's own name is its parameters' scope), so plain Flax works too: ``logits, state =
model.apply(variables, images, mutable=['intermediates'])``;
``state['intermediates']['fc7_out'][0]`` is fc7 (with ``capture_intermediates=True`` the
modules' outputs sit beside them). ``model.init`` never stores them and nothing is
stored unless that collection is mutable, so ordinary calls pay nothing. :func:`extract` is a
pure function of its arguments: wrap it in ``jax.jit`` or ``jax.vmap`` as any other.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

FEATURE_NAMES = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'pool5', 'fc6', 'fc7')
COLLECTION = 'intermediates'
SUFFIX = '_out'  # a sown value may not take its layer's name: that is the layer's own scope


def extract(model, variables, images: jax.Array, names: Sequence[str] = FEATURE_NAMES,
            train: bool = False, rngs=None) -> dict[str, jax.Array]:
  """``{name: activation}`` for ``names`` (default: all of :data:`FEATURE_NAMES`).

  ``images`` are the network's input (NHWC, already preprocessed, e.g. by
  ``model.preprocess``). Activations come in the model's compute dtype. With ``train=True``
  (needs ``rngs={'dropout': key}``) fc6 and fc7 are taken before dropout.
  """
  unknown = [n for n in names if n not in FEATURE_NAMES]
  if unknown:
    raise ValueError(f'No feature named {unknown[0]!r}; choose from {", ".join(FEATURE_NAMES)}.')
  _, state = model.apply(variables, images, train=train, rngs=rngs, mutable=[COLLECTION])
  sown = state[COLLECTION]
  return {name: sown[name + SUFFIX][0] for name in names}
