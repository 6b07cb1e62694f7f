"""Training losses of EDM (Karras et al. 2022): noise-level distributions p(σ) and weights λ(σ).

loss(y) = λ(σ) · mean over pixels of (D(y + n; σ) − y)², σ ~ p(σ), n ~ N(0, σ²I); all in float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxdiff.registry import make_named
from jaxdiff.precond import VP_BETA_D, VP_BETA_MIN, VP_EPSILON_T, vp_sigma

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class EDMLoss:
  """ln σ ~ N(P_mean, P_std²); λ(σ) = (σ² + σ_d²)/(σ·σ_d)²."""
  P_mean: float = -1.2
  P_std: float = 1.2
  sigma_data: float = 0.5

  def sample_sigma(self, key, shape, sigma_lo=None, sigma_hi=None):
    """σ from the log-normal; with `sigma_lo`/`sigma_hi` from it restricted to [lo, hi)
    (inverse-CDF sampling, as multi-stage training draws one stage's batch)."""
    if sigma_lo is None and sigma_hi is None:
      return jnp.exp(jax.random.normal(key, shape, _F32) * self.P_std + self.P_mean)
    a, b = self._cdf_bounds(sigma_lo, sigma_hi)
    u = jax.random.uniform(key, shape, _F32, minval=a, maxval=b)
    z = jax.scipy.special.ndtri(jnp.clip(u, 1e-7, 1 - 1e-7))
    sigma = jnp.exp(z * self.P_std + self.P_mean)
    lo = 0.0 if sigma_lo is None else sigma_lo
    hi = jnp.inf if sigma_hi is None else sigma_hi
    return jnp.clip(sigma, lo, jnp.nextafter(jnp.asarray(hi, _F32), 0))

  def _cdf_bounds(self, sigma_lo, sigma_hi):
    def cdf(s, default):
      if s is None:
        return jnp.asarray(default, _F32)
      return jax.scipy.special.ndtr((jnp.log(jnp.asarray(s, _F32)) - self.P_mean) / self.P_std)
    return cdf(sigma_lo, 0.0), cdf(sigma_hi, 1.0)

  def probability(self, sigma_lo=None, sigma_hi=None):
    """P(σ_lo ≤ σ < σ_hi) under the log-normal (a stage's share of training steps)."""
    a, b = self._cdf_bounds(sigma_lo, sigma_hi)
    return b - a

  def weight(self, sigma):
    sigma = jnp.asarray(sigma, _F32)
    return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


@dataclasses.dataclass(frozen=True)
class VPLoss:
  """t ~ U(ε_t, 1), σ = σ_VP(t); λ(σ) = 1/σ²."""
  beta_d: float = VP_BETA_D
  beta_min: float = VP_BETA_MIN
  epsilon_t: float = VP_EPSILON_T

  def sample_sigma(self, key, shape):
    t = jax.random.uniform(key, shape, _F32, minval=self.epsilon_t, maxval=1.0)
    return vp_sigma(t, self.beta_d, self.beta_min)

  def weight(self, sigma):
    return 1 / jnp.asarray(sigma, _F32) ** 2


@dataclasses.dataclass(frozen=True)
class VELoss:
  """σ log-uniform on [σ_min, σ_max]; λ(σ) = 1/σ²."""
  sigma_min: float = 0.02
  sigma_max: float = 100.0

  def sample_sigma(self, key, shape):
    u = jax.random.uniform(key, shape, _F32)
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** u

  def weight(self, sigma):
    return 1 / jnp.asarray(sigma, _F32) ** 2


# "edm2" (jaxdiff.edm2_loss) is only the settings of EDM2's loss: the edm2 family evaluates it with
# the network's uncertainty head, never through `denoising_loss` below.
from jaxdiff.edm2_loss import EDM2Loss  # noqa: E402

LOSSES = {"edm": EDMLoss, "vp": VPLoss, "ve": VELoss, "edm2": EDM2Loss}


def make_loss(name: str, **kw):
  """The loss called `name` (edm / vp / ve / edm2) with keyword constants `kw`."""
  return make_named(LOSSES, "loss", name, kw)


def denoising_loss(loss, denoise_fn, key, y, sigma=None, **cond):
  """Per-example loss [B]: λ(σ)·mean over non-batch axes of (D(y + n; σ) − y)², in float32.

  `denoise_fn(x, sigma[B], **cond)`. The key is split into one for σ and one for n. Pass `sigma`
  ([B]) to use given noise levels instead of drawing them (e.g. multi-stage training).
  """
  y = jnp.asarray(y, _F32)
  key_sigma, key_noise = jax.random.split(key)
  if sigma is None:
    sigma = loss.sample_sigma(key_sigma, (y.shape[0],))
  sigma = jnp.asarray(sigma, _F32)
  bcast = (y.shape[0],) + (1,) * (y.ndim - 1)
  n = jax.random.normal(key_noise, y.shape, _F32) * sigma.reshape(bcast)
  D = jnp.asarray(denoise_fn(y + n, sigma, **cond), _F32)
  per_pixel = (D - y) ** 2
  return loss.weight(sigma) * jnp.mean(per_pixel, axis=tuple(range(1, y.ndim)))
