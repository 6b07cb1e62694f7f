"""Guidance as transforms of a denoiser: each takes D(x, σ, **cond) and returns a D' with the same
signature, so they compose and the sampler never knows. Pure and traceable; no config.

- `cfg_guidance`: classifier-free guidance (Ho & Salimans 2022) with the all-zero one-hot as the
  null label that label dropout trains on.
- `autoguidance`: guidance by a second, weaker model of the same task (Karras et al. 2024).
"""

from __future__ import annotations

import jax.numpy as jnp


def cfg_guidance(denoise_cond, w: float):
  """D'(x; σ, c) = D(x; σ, ∅) + w·(D(x; σ, c) − D(x; σ, ∅)); both evaluations run as one doubled
  batch. `denoise_cond(x, sigma, class_labels=...)`; class_labels [B, C] one-hot. w = 1 is D."""
  def guided(x, sigma, class_labels, **cond):
    both = jnp.concatenate([class_labels, jnp.zeros_like(class_labels)])
    doubled = {k: jnp.concatenate([v, v]) for k, v in cond.items() if v is not None}
    d = denoise_cond(jnp.concatenate([x, x]), jnp.concatenate([sigma, sigma]), class_labels=both,
                     **doubled)
    d_cond, d_uncond = jnp.split(d, 2)
    return d_uncond + w * (d_cond - d_uncond)
  return guided


def autoguidance(denoise_main, denoise_guide, w: float):
  """D'(x; σ) = D_guide(x; σ) + w·(D_main(x; σ) − D_guide(x; σ)), both called with the same
  conditioning. w = 1 is D_main; w = 0 is D_guide."""
  def guided(x, sigma, **cond):
    d_guide = denoise_guide(x, sigma, **cond)
    return d_guide + w * (denoise_main(x, sigma, **cond) - d_guide)
  return guided
