"""Adam with the reference's linear learning-rate ramp-up and its handling of non-finite gradients."""

import jax
import jax.numpy as jnp
import optax


def lr_schedule(lr: float, batch_size: int, rampup_images: float):
  """lr · min(images_seen / rampup_images, 1); the count optax passes is the number of steps taken."""
  def schedule(count):
    images = count.astype(jnp.float32) * batch_size
    return lr * jnp.minimum(images / max(rampup_images, 1e-8), 1.0)
  return schedule


def adam(lr: float, batch_size: int, rampup_images: float, beta1=0.9, beta2=0.999, eps=1e-8):
  return optax.adam(lr_schedule(lr, batch_size, rampup_images), b1=beta1, b2=beta2, eps=eps)


def sanitize_grads(grads):
  """NaN -> 0 and ±inf -> ±1e5, as the reference does, so one bad batch cannot poison the weights."""
  return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5), grads)
