"""The EDM2 training objective and learning-rate schedule (Karras et al., CVPR 2024; NVlabs/edm2
training/training_loop.py: EDM2Loss, learning_rate_schedule).

Loss (Eq. 21), per pixel: (w(σ)/e^u(σ))·(D(y + n; σ) − y)² + u(σ), σ ~ LogNormal(P_mean, P_std),
w(σ) = (σ² + σ_d²)/(σ·σ_d)², u(σ) the network's uncertainty head. The reference returns this per
pixel and its training loop takes `loss.sum() / batch`: a SUM over pixels (u(σ) counted once per
pixel) and a mean over the batch. `edm2_loss` returns that per-example sum, so that
jnp.mean(edm2_loss(...)) is the reference's scalar exactly (gradients included).

In losses.LOSSES as "edm2" for its settings only (config loss.name = "edm2"): `losses.denoising_loss`
takes a denoiser returning D only, this one needs (D, u); the edm2 family (jaxdiff/families/edm2.py)
calls `edm2_loss` with `denoise_and_logvar`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class EDM2Loss:
  """ln σ ~ N(P_mean, P_std²); w(σ) = (σ² + σ_d²)/(σ·σ_d)². Defaults: the reference class's."""
  P_mean: float = -0.4
  P_std: float = 1.0
  sigma_data: float = 0.5

  def sample_sigma(self, key, shape):
    return jnp.exp(jax.random.normal(key, shape, _F32) * self.P_std + self.P_mean)

  def weight(self, sigma):
    sigma = jnp.asarray(sigma, _F32)
    return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


def denoise_and_logvar(precond, net_fn, x, sigma, **cond):
  """(D(x; σ), u(σ)): precond.denoise's D = c_skip·x + c_out·F(c_in·x; c_noise) in float32, and the
  network's uncertainty u [B]. `net_fn(x_in, c_noise, **cond) -> (F, logvar[B])` (an EDM2 network
  called with return_logvar=True)."""
  x = jnp.asarray(x, _F32)
  batch = x.shape[0]
  sigma = jnp.broadcast_to(jnp.asarray(sigma, _F32).reshape(-1), (batch,))
  c_skip, c_out, c_in, c_noise = precond.coefficients(sigma)
  bcast = (batch,) + (1,) * (x.ndim - 1)
  F, logvar = net_fn(c_in.reshape(bcast) * x, c_noise, **cond)
  D = c_skip.reshape(bcast) * x + c_out.reshape(bcast) * jnp.asarray(F, _F32)
  return D, jnp.asarray(logvar, _F32).reshape(batch)


def edm2_loss(loss: EDM2Loss, denoise_fn, key, y, sigma=None, **cond):
  """Per-example loss [B]: Σ over pixels of (w(σ)/e^u)·(D(y + n; σ) − y)² + u, in float32.

  `denoise_fn(x, sigma[B], **cond) -> (D, logvar[B])`. The key is split into one for σ and one for
  n (as losses.denoising_loss). Pass `sigma` ([B]) to use given noise levels.
  """
  y = jnp.asarray(y, _F32)
  key_sigma, key_noise = jax.random.split(key)
  if sigma is None:
    sigma = loss.sample_sigma(key_sigma, (y.shape[0],))
  sigma = jnp.asarray(sigma, _F32)
  bcast = (y.shape[0],) + (1,) * (y.ndim - 1)
  n = jax.random.normal(key_noise, y.shape, _F32) * sigma.reshape(bcast)
  D, logvar = denoise_fn(y + n, sigma, **cond)
  D = jnp.asarray(D, _F32)
  logvar = jnp.asarray(logvar, _F32).reshape(bcast)
  per_pixel = (loss.weight(sigma).reshape(bcast) / jnp.exp(logvar)) * (D - y) ** 2 + logvar
  return jnp.sum(per_pixel, axis=tuple(range(1, y.ndim)))


def edm2_lr(images, *, ref_lr: float, batch_size: int, ref_batches: float, rampup_images: float):
  """The reference's learning_rate_schedule at `images` seen (NumPy or jax scalar):
  ref_lr / √max(t/(ref_batches·batch), 1) · min(t/rampup, 1); ref_batches ≤ 0 or rampup ≤ 0 turn
  the decay or the ramp-up off, as there."""
  xp = jnp if isinstance(images, jax.Array) else np
  t = images
  lr = ref_lr * xp.ones_like(t * 1.0)
  if ref_batches > 0:
    lr = lr / xp.sqrt(xp.maximum(t / (ref_batches * batch_size), 1.0))
  if rampup_images > 0:
    lr = lr * xp.minimum(t / rampup_images, 1.0)
  return lr


def edm2_lr_schedule(ref_lr: float, batch_size: int, ref_batches: float, rampup_images: float):
  """An optax schedule of the step count: step k is taken with the lr at t = k·batch images (the
  reference sets the lr from cur_nimg before its step, so the very first step has lr 0)."""
  def schedule(count):
    images = jnp.asarray(count, _F32) * batch_size
    return edm2_lr(images, ref_lr=ref_lr, batch_size=batch_size, ref_batches=ref_batches,
                   rampup_images=rampup_images)
  return schedule


def edm2_adam(ref_lr: float, batch_size: int, ref_batches: float, rampup_images: float,
              beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-8):
  """Adam with the EDM2 schedule (the reference: torch.optim.Adam, betas (0.9, 0.99), eps 1e-8)."""
  import optax
  return optax.adam(edm2_lr_schedule(ref_lr, batch_size, ref_batches, rampup_images),
                    b1=beta1, b2=beta2, eps=eps)


def sanitize_grads_edm2(grads):
  """NaN and ±inf -> 0, as the EDM2 reference's force_finite (EDM's loop clips ±inf to ±1e5)."""
  return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0), grads)
