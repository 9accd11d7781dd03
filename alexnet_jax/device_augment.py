"""The per-pixel half of the paper's augmentation, on the device inside the jitted step.

The host (``alexnet_jax.input_pipeline``) decodes each image's crop and ships it as uint8, with
the few numbers its augmentation drew from the example's stateless key (``augment.
augment_params``): whether to flip it and its colour offset. Here, inside the step, the crop is
flipped, cast and shifted:

    network input = uint8 crop [reflected] * pixel_scale + pixel_offset

with ``pixel_scale = input_scale / 255`` and ``pixel_offset = (pca_shift - mean_rgb) *
input_scale`` per example, the same arithmetic as the host-side ``augment.normalize``. A batch
carries everything its pixels need, so the steps stay ``(state, batch) -> ...`` with no data
config inside them. Imports only jax (``train`` uses it; see ``test_packaging``).

Batch fields (leading axis: examples):
  image: uint8 (B, H, W, 3), or (B, 5, H, W, 3) the paper's five test patches (the device adds
    their reflections: (B, 10, H, W, 3) reach the network).
  flip: bool (B,), training only: reflect this crop left-right.
  pixel_scale: float32 (B,), or (B, 3) per channel (a preset's preprocessing,
    ``model.preprocess_affine``); pixel_offset: float32 (B, 3).
A float ``image`` is taken as network inputs already (synthetic benchmarks, the steps' tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NUM_TEST_PATCHES = 5  # four corners and the centre; their reflections make the paper's ten


def _per_example(values: jax.Array, image: jax.Array) -> jax.Array:
  """(B, ...) values broadcast against images (B, ..., H, W, 3), the channel axis kept."""
  trailing = values.shape[1:]
  return values.reshape(values.shape[:1] + (1,) * (image.ndim - 1 - len(trailing)) + trailing)


def network_inputs(batch: dict[str, jax.Array]) -> jax.Array:
  """The float32 images the network sees, from a batch of uint8 crops (see the module doc)."""
  image = batch['image']
  if image.dtype != jnp.uint8:
    return image
  if 'flip' in batch:
    image = jnp.where(_per_example(batch['flip'], image), jnp.flip(image, axis=-2), image)
  if image.ndim == 5:
    if image.shape[1] != NUM_TEST_PATCHES:
      raise ValueError(f'Multi-crop uint8 batches hold the {NUM_TEST_PATCHES} test patches, not '
                       f'{image.shape[1]}.')
    image = jnp.concatenate([image, jnp.flip(image, axis=-2)], axis=1)
  scale = _per_example(batch['pixel_scale'].astype(jnp.float32), image)
  offset = _per_example(batch['pixel_offset'].astype(jnp.float32), image)
  return image.astype(jnp.float32) * scale + offset
