"""Discriminator guidance (Kim et al., ICML 2023, "Refining Generative Process with Discriminator
Guidance in Score-based Diffusion Models") as a transform of a denoiser D(x, σ) -> D'(x, σ).

A discriminator d(x_σ, σ) trained to tell diffused data (label 1) from diffused model samples
(label 0) estimates, at its optimum, d* = q_σ / (p_σ + q_σ), so log(d / (1 − d)) = log q_σ − log p_σ
and ∇_x of it is the score gap between data q and model p. Adding it to the model's score
(∇ log p_σ = (D − x) / σ²) and writing the sum back in D space gives

  D'(x, σ) = D(x, σ) + w · σ² · ∇_x log(d / (1 − d)),

which at w = 1 and the optimal d is exactly the denoiser of the data. The transform is a plain
function of (x, σ), so every solver of `jaxdiff.sampling.sample` runs it unchanged (each
network evaluation becomes one D evaluation plus one discriminator forward + backward).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp


def guidance_gradient(log_ratio: Callable, x, sigma):
  """∇_x log(d / (1 − d)) per sample: jax.grad of the batch sum of log_ratio(x, σ) [B].

  The sum is exact per sample as long as log_ratio treats samples independently (no batch
  statistics), which every network of jaxdiff does in eval mode.
  """
  return jax.grad(lambda y: jnp.sum(log_ratio(y, sigma)))(x)


def discriminator_guidance(denoise: Callable, log_ratio: Callable, w: float,
                           sigma_min: float = 0.0, sigma_max: float = math.inf) -> Callable:
  """D'(x, σ) = D(x, σ) + w·σ²·∇_x log_ratio(x, σ), applied where sigma_min <= σ <= sigma_max.

  denoise(x [B, ...], sigma [B]) -> [B, ...]; log_ratio(x, sigma [B]) -> [B], the discriminator's
  logit log(d / (1 − d)). w = 0 returns `denoise` itself. The σ window follows the reference,
  which switches guidance off outside a time range (its discriminator is trained on one).
  """
  w = float(w)
  if w == 0.0:
    return denoise

  def guided(x, sigma):
    d = denoise(x, sigma)
    sigma_b = jnp.broadcast_to(jnp.asarray(sigma, x.dtype).reshape(-1), (x.shape[0],))
    g = guidance_gradient(log_ratio, x, sigma_b)
    scale = w * sigma_b**2
    if sigma_min > 0 or sigma_max < math.inf:
      scale = jnp.where((sigma_b >= sigma_min) & (sigma_b <= sigma_max), scale, 0.0)
    scale = scale.reshape((-1,) + (1,) * (x.ndim - 1))
    return (d + scale * g).astype(d.dtype)
  return guided
