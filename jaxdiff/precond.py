"""Preconditioning of a raw network F into a denoiser D(x; σ) (EDM, Karras et al. 2022, Table 1).

D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)). Each preconditioning is a frozen
dataclass (hashable, so it can be a static jit argument) with `coefficients(sigma)`,
`round_sigma(sigma)`, `out_channels_factor`, and the σ range the network supports.
All coefficients are float32, whatever the network's compute dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.registry import make_named

_F32 = jnp.float32


def _f32(sigma):
  return jnp.asarray(sigma, _F32)


# ---------------------------------------------------------------- VP noise level schedule helpers
# The reference's VP SDE constants, β(t) = β_min + β_d·t on t ∈ [ε_t, 1]: the one definition (the VP
# loss, schedules and discriminator guidance take theirs from here).
VP_BETA_D, VP_BETA_MIN, VP_EPSILON_T = 19.9, 0.1, 1e-5


def vp_sigma(t, beta_d=VP_BETA_D, beta_min=VP_BETA_MIN):
  """σ(t) = √(exp(½β_d t² + β_min t) − 1) of the VP SDE (works on numpy or jax arrays)."""
  xp = jnp if isinstance(t, jax.Array) else np
  return xp.sqrt(xp.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_sigma_inv(sigma, beta_d=VP_BETA_D, beta_min=VP_BETA_MIN):
  """t(σ), the inverse of `vp_sigma`: solves ½β_d t² + β_min t = ln(1 + σ²) for t ≥ 0."""
  xp = jnp if isinstance(sigma, jax.Array) else np
  return (xp.sqrt(beta_min**2 + 2 * beta_d * xp.log1p(sigma**2)) - beta_min) / beta_d


# ---------------------------------------------------------------- iDDPM σ table
@functools.lru_cache(maxsize=8)
def _iddpm_table(C_1: float, C_2: float, M: int) -> np.ndarray:
  """u_0 > u_1 > ... > u_M = 0 (float64): the noise levels of iDDPM's cosine schedule.

  ᾱ(j) = sin²(½π j / (M (C_2 + 1))); u_{j−1} = √((u_j² + 1) / max(ᾱ(j−1)/ᾱ(j), C_1) − 1).
  """
  def alpha_bar(j):
    return np.sin(0.5 * np.pi * j / M / (C_2 + 1)) ** 2
  u = np.zeros(M + 1, np.float64)
  for j in range(M, 0, -1):
    u[j - 1] = np.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
  u.setflags(write=False)
  return u


def iddpm_sigma_table(C_1: float = 0.001, C_2: float = 0.008, M: int = 1000) -> np.ndarray:
  """The iDDPM σ table u_0..u_M (decreasing, u_M = 0), float64, read-only."""
  return _iddpm_table(float(C_1), float(C_2), int(M))


# ---------------------------------------------------------------- preconditionings
@dataclasses.dataclass(frozen=True)
class EDMPrecond:
  """EDM: c_skip = σ_d²/(σ²+σ_d²), c_out = σσ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ¼ln σ."""
  sigma_data: float = 0.5
  sigma_min: float = 0.0
  sigma_max: float = math.inf

  out_channels_factor = 1

  def coefficients(self, sigma):
    sigma = _f32(sigma)
    sd = self.sigma_data
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / jnp.sqrt(sigma**2 + sd**2)
    c_in = 1 / jnp.sqrt(sigma**2 + sd**2)
    c_noise = jnp.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise

  def round_sigma(self, sigma):
    return sigma if not isinstance(sigma, jax.Array) else _f32(sigma)


@dataclasses.dataclass(frozen=True)
class VPPrecond:
  """VP (DDPM++): c_skip = 1, c_out = −σ, c_in = 1/√(σ²+1), c_noise = (M−1)·t(σ)."""
  beta_d: float = VP_BETA_D
  beta_min: float = VP_BETA_MIN
  M: int = 1000
  epsilon_t: float = VP_EPSILON_T

  out_channels_factor = 1

  @property
  def sigma_min(self) -> float:
    return float(vp_sigma(self.epsilon_t, self.beta_d, self.beta_min))

  @property
  def sigma_max(self) -> float:
    return float(vp_sigma(1.0, self.beta_d, self.beta_min))

  def coefficients(self, sigma):
    sigma = _f32(sigma)
    c_skip = jnp.ones_like(sigma)
    c_out = -sigma
    c_in = 1 / jnp.sqrt(sigma**2 + 1)
    c_noise = (self.M - 1) * vp_sigma_inv(sigma, self.beta_d, self.beta_min)
    return c_skip, c_out, c_in, c_noise

  def round_sigma(self, sigma):
    return sigma if not isinstance(sigma, jax.Array) else _f32(sigma)


@dataclasses.dataclass(frozen=True)
class VEPrecond:
  """VE (NCSN++): c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(σ/2)."""
  sigma_min: float = 0.02
  sigma_max: float = 100.0

  out_channels_factor = 1

  def coefficients(self, sigma):
    sigma = _f32(sigma)
    c_skip = jnp.ones_like(sigma)
    c_out = sigma
    c_in = jnp.ones_like(sigma)
    c_noise = jnp.log(0.5 * sigma)
    return c_skip, c_out, c_in, c_noise

  def round_sigma(self, sigma):
    return sigma if not isinstance(sigma, jax.Array) else _f32(sigma)


@dataclasses.dataclass(frozen=True)
class IDDPMPrecond:
  """iDDPM (ADM): c_skip = 1, c_out = −σ, c_in = 1/√(σ²+1), c_noise = M−1−argmin_j |σ − u_j|.

  The network predicts 2× the image channels (ε and a variance term); `denoise` keeps the first half.
  """
  C_1: float = 0.001
  C_2: float = 0.008
  M: int = 1000

  out_channels_factor = 2

  @property
  def u(self) -> np.ndarray:
    return iddpm_sigma_table(self.C_1, self.C_2, self.M)

  @property
  def sigma_min(self) -> float:
    return float(self.u[self.M - 1])

  @property
  def sigma_max(self) -> float:
    return float(self.u[0])

  def _index(self, sigma):
    if not isinstance(sigma, jax.Array):  # host (NumPy float64) path, used to build sampler grids
      flat = np.asarray(sigma, np.float64).reshape(-1, 1)
      return np.argmin(np.abs(flat - self.u[None, :]), axis=1).reshape(np.shape(sigma))
    # u is decreasing: binary-search the ascending copy and take the nearer neighbour. O(B log M),
    # where an argmin over a [B, M] distance matrix is slow to constant-fold for a constant σ.
    u_asc = jnp.asarray(self.u[::-1], _F32)
    s = _f32(sigma)
    hi = jnp.clip(jnp.searchsorted(u_asc, s), 1, self.M)
    lo = hi - 1
    nearer_hi = jnp.abs(u_asc[hi] - s) <= jnp.abs(s - u_asc[lo])  # ties: the larger σ, as argmin
    return self.M - jnp.where(nearer_hi, hi, lo)

  def coefficients(self, sigma):
    sigma = _f32(sigma)
    c_skip = jnp.ones_like(sigma)
    c_out = -sigma
    c_in = 1 / jnp.sqrt(sigma**2 + 1)
    c_noise = (self.M - 1 - self._index(sigma)).astype(_F32)
    return c_skip, c_out, c_in, c_noise

  def round_sigma(self, sigma):
    """The nearest entry of the σ table (what the network was trained on); NumPy in, NumPy out."""
    if not isinstance(sigma, jax.Array):
      return self.u[self._index(sigma)]
    return jnp.asarray(self.u, _F32)[self._index(sigma)]


PRECONDS = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond, "iddpm": IDDPMPrecond}


def make_precond(name: str, **kw):
  """The preconditioning called `name` (edm / vp / ve / iddpm) with keyword constants `kw`."""
  return make_named(PRECONDS, "precond", name, kw)


def denoise(precond, net_fn, x, sigma, **cond):
  """D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise, **cond), computed in float32.

  x: [B, ...] (NHWC images or any trailing shape), sigma: scalar or [B]. `net_fn(x_in, c_noise[B],
  **cond)` returns F with `out_channels_factor`× the channels of x on the last axis (the extra
  channels are dropped). Returns float32 shaped like x.
  """
  x = jnp.asarray(x, _F32)
  batch = x.shape[0]
  sigma = jnp.broadcast_to(_f32(sigma).reshape(-1), (batch,))
  c_skip, c_out, c_in, c_noise = precond.coefficients(sigma)
  bcast = (batch,) + (1,) * (x.ndim - 1)
  F = net_fn(c_in.reshape(bcast) * x, c_noise, **cond)
  F = jnp.asarray(F, _F32)
  if precond.out_channels_factor != 1:
    F = F[..., : x.shape[-1]]
  return c_skip.reshape(bcast) * x + c_out.reshape(bcast) * F
