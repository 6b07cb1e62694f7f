"""EMA with a half-life in images and the reference's ramp-up (Karras et al. 2022, training loop)."""

import jax
import jax.numpy as jnp


def ema_beta(images_seen, batch_size: int, halflife_images: float, rampup_ratio: float | None):
  """β = 0.5^(batch / half-life), half-life = min(halflife_images, rampup_ratio · images_seen)."""
  halflife = jnp.asarray(halflife_images, jnp.float32)
  if rampup_ratio is not None:
    halflife = jnp.minimum(halflife, jnp.asarray(images_seen, jnp.float32) * rampup_ratio)
  return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))


def ema_update(ema, params, beta):
  return jax.tree.map(lambda e, p: p + (e - p) * beta.astype(e.dtype), ema, params)
