"""Consistency models (Song et al., ICML 2023) in the improved-training recipe iCT (Song & Dhariwal,
ICLR 2024): pure math, no network, no config reads.

- `ConsistencyPrecond`: f(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)) with
  c_skip = σ_d²/((σ − σ_min)² + σ_d²), c_out = σ_d·(σ − σ_min)/√(σ_d² + σ²), c_in = 1/√(σ² + σ_d²),
  c_noise = ¼ ln σ (EDM's, so an EDM network's weights start a consistency model). c_skip(σ_min) = 1
  and c_out(σ_min) = 0 exactly in floating point, so f(x, σ_min) = x bit for bit. Usable wherever an
  EDM preconditioning is (`precond.denoise`).
- `ICT`: the iCT discretisation and loss: Karras noise levels σ_1 < … < σ_N, the doubling curriculum
  N(k) = min(s0·2^⌊k/K'⌋, s1) + 1 with K' = ⌊K/(log2⌊s1/s0⌋ + 1)⌋, the index i drawn with
  p(i) ∝ erf((ln σ_{i+1} − P_mean)/(√2 P_std)) − erf((ln σ_i − P_mean)/(√2 P_std)), the weight
  λ(σ_i) = 1/(σ_{i+1} − σ_i), the pseudo-Huber metric d(x, y) = √(‖x − y‖² + c²) − c with
  c = 0.00054·√dim, and the consistency training loss
      λ(σ_i)·d(f_θ(x + σ_{i+1}z, σ_{i+1}), sg[f_θ(x + σ_i z, σ_i)])
  with the teacher the same parameters under stop-gradient (no EMA) and the same dropout rng in
  both branches (the paper's note: otherwise the two branches disagree by dropout alone).
- Consistency distillation: the target x̂_{σ_i} is one Heun step of an EDM teacher's ODE
  dx/dσ = (x − D(x; σ))/σ from σ_{i+1} to σ_i (`heun_step`), and the loss compares
  f_θ(x + σ_{i+1}z, σ_{i+1}) with sg[f(x̂_{σ_i}, σ_i)].
- Sampling: `sampling.sample(f, latents, "consistency", K, sigmas=...)` (Algorithm 1; K = 1 is one
  evaluation).

The loss functions take `f(x, sigma[B], rng) -> f_θ(x, σ)` (the caller closes over parameters and
preconditioning) so the same code serves any network and a toy function in tests. N may be a
Python int or a traced integer (the curriculum inside one compiled step): index sampling masks a
table of the largest size, s1 + 1.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import JaxdiffError

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class ConsistencyPrecond:
  """The consistency parameterisation (boundary condition f(x, σ_min) = x) as a preconditioning."""
  sigma_data: float = 0.5
  sigma_min: float = 0.002
  sigma_max: float = 80.0

  out_channels_factor = 1

  def coefficients(self, sigma):
    sigma = jnp.asarray(sigma, _F32)
    sd = self.sigma_data
    # (σ − σ_min) is exactly 0 at σ = σ_min (both rounded to the same float32), so c_skip = sd²/sd²
    # = 1 and c_out = 0 exactly.
    dev = sigma - self.sigma_min
    c_skip = sd**2 / (dev**2 + sd**2)
    c_out = sd * dev / jnp.sqrt(sd**2 + sigma**2)
    c_in = 1 / jnp.sqrt(sigma**2 + sd**2)
    c_noise = jnp.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise

  def round_sigma(self, sigma):
    return sigma if not isinstance(sigma, jax.Array) else jnp.asarray(sigma, _F32)


def pseudo_huber(x, y, c):
  """d(x, y) = √(‖x − y‖² + c²) − c per example ([B, ...] -> [B], float32)."""
  diff = (jnp.asarray(x, _F32) - jnp.asarray(y, _F32)).reshape(jnp.shape(x)[0], -1)
  return jnp.sqrt(jnp.sum(diff**2, axis=-1) + c**2) - c


def huber_c(dim: int) -> float:
  """iCT's c = 0.00054·√dim (dim = number of values per example, e.g. 3·32·32)."""
  return 0.00054 * math.sqrt(dim)


def heun_step(teacher: Callable, x, sigma_from, sigma_to):
  """One Heun step of dx/dσ = (x − D(x; σ))/σ from σ_from to σ_to (> 0), per example [B].

  teacher(x, sigma[B]) -> D(x; σ). x̂ = x + h·½(d + d'), d at (x, σ_from), d' at the Euler point.
  """
  x = jnp.asarray(x, _F32)
  bc = (x.shape[0],) + (1,) * (x.ndim - 1)
  s0 = jnp.broadcast_to(jnp.asarray(sigma_from, _F32).reshape(-1), (x.shape[0],))
  s1 = jnp.broadcast_to(jnp.asarray(sigma_to, _F32).reshape(-1), (x.shape[0],))
  h = (s1 - s0).reshape(bc)
  d = (x - jnp.asarray(teacher(x, s0), _F32)) / s0.reshape(bc)
  x_e = x + h * d
  d_e = (x_e - jnp.asarray(teacher(x_e, s1), _F32)) / s1.reshape(bc)
  return x + h * 0.5 * (d + d_e)


@dataclasses.dataclass(frozen=True)
class ICT:
  """iCT constants (the paper's defaults) and its discretisation, curriculum, sampling and loss."""
  sigma_min: float = 0.002
  sigma_max: float = 80.0
  rho: float = 7.0
  P_mean: float = -1.1
  P_std: float = 2.0
  s0: int = 10
  s1: int = 1280
  c: float | None = None  # pseudo-Huber c; None: 0.00054·√dim

  def __post_init__(self):
    if not (0 < self.sigma_min < self.sigma_max < math.inf):
      raise JaxdiffError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
    if not (1 <= self.s0 <= self.s1):
      raise JaxdiffError(f"need 1 <= s0 <= s1, got s0={self.s0}, s1={self.s1}")
    if self.P_std <= 0:
      raise JaxdiffError(f"P_std must be > 0, got {self.P_std}")

  # ---------------------------------------------------------------- discretisation
  def stage_length(self, total_steps: int) -> int:
    """K' = ⌊K/(log2⌊s1/s0⌋ + 1)⌋ (at least 1)."""
    return max(1, int(total_steps // (math.log2(self.s1 // self.s0) + 1)))

  def num_scales(self, step, total_steps: int):
    """N(k) = min(s0·2^⌊k/K'⌋, s1) + 1: Python int for a Python step, int32 for a traced one."""
    kp = self.stage_length(total_steps)
    if isinstance(step, (int, np.integer)):
      return int(min(self.s0 * 2 ** (int(step) // kp), self.s1) + 1)
    cap = int(math.ceil(math.log2(self.s1 / self.s0)))  # beyond it N = s1 + 1; no shift overflow
    doublings = jnp.minimum(jnp.asarray(step, jnp.int32) // kp, cap)
    return jnp.minimum(self.s0 * jnp.left_shift(1, doublings), self.s1) + 1

  def sigma(self, i, N):
    """σ_i (i = 0 … N−1, increasing; the paper's σ_{i+1}) = (σ_min^{1/ρ} + i/(N−1)(σ_max^{1/ρ} −
    σ_min^{1/ρ}))^ρ; i, N int or traced. float32."""
    a, b = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
    frac = jnp.asarray(i, _F32) / (jnp.asarray(N, _F32) - 1)
    return (a + frac * (b - a)) ** self.rho

  def sigmas(self, N: int) -> np.ndarray:
    """The whole grid σ_0 < … < σ_{N−1} (float64, host)."""
    a, b = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
    return (a + np.arange(N) / (N - 1) * (b - a)) ** self.rho

  def index_log_probs(self, N):
    """log p(i), i = 0 … s1 − 1 (−inf for i ≥ N − 1): the erf-discretised log-normal over the
    intervals [σ_i, σ_{i+1}]. N int or traced."""
    return jnp.log(self._index_weights(N) / jnp.sum(self._index_weights(N)))

  def _index_weights(self, N):
    i = jnp.arange(self.s1)
    z = lambda s: (jnp.log(s) - self.P_mean) / (math.sqrt(2) * self.P_std)
    za, zb = z(self.sigma(i, N)), z(self.sigma(i + 1, N))
    erfc = jax.scipy.special.erfc
    # erf(zb) − erf(za) through erfc on the side away from 0: no float32 cancellation in the tails.
    w = jnp.where(za + zb > 0, erfc(za) - erfc(zb), erfc(-zb) - erfc(-za))
    return jnp.where(i < N - 1, w, 0.0)

  def sample_index(self, key, shape, N):
    """i ~ p(i) (int32 of `shape`) by inverting the CDF: the student sees σ_{i+1}, the teacher σ_i."""
    cdf = jnp.cumsum(self._index_weights(N))
    u = jax.random.uniform(key, tuple(shape), _F32) * cdf[-1]
    i = jnp.searchsorted(cdf, u, side="right")
    return jnp.clip(i, 0, jnp.asarray(N) - 2).astype(jnp.int32)

  def weight(self, i, N):
    """λ(σ_i) = 1/(σ_{i+1} − σ_i)."""
    return 1 / (self.sigma(i + 1, N) - self.sigma(i, N))

  # ---------------------------------------------------------------- losses
  def _c(self, x):
    return self.c if self.c is not None else huber_c(int(np.prod(jnp.shape(x)[1:])))

  def ct_loss_given(self, f: Callable, x, z, i, N, rng=None):
    """Per-example CT loss [B] for given noise z [B, ...] and indices i [B]:
    λ(σ_i)·d(f(x + σ_{i+1}z, σ_{i+1}, rng), sg[f(x + σ_i z, σ_i, rng)])."""
    x = jnp.asarray(x, _F32)
    bc = (x.shape[0],) + (1,) * (x.ndim - 1)
    s_hi, s_lo = self.sigma(i + 1, N), self.sigma(i, N)
    student = f(x + s_hi.reshape(bc) * z, s_hi, rng)
    teacher = jax.lax.stop_gradient(f(x + s_lo.reshape(bc) * z, s_lo, rng))
    return self.weight(i, N) * pseudo_huber(student, teacher, self._c(x))

  def ct_loss(self, f: Callable, x, key, N, rng=None):
    """Per-example iCT loss [B]; z = normal(split(key)[0]), i = sample_index(split(key)[1])."""
    kz, ki = jax.random.split(key)
    x = jnp.asarray(x, _F32)
    z = jax.random.normal(kz, x.shape, _F32)
    i = self.sample_index(ki, (x.shape[0],), N)
    return self.ct_loss_given(f, x, z, i, N, rng)

  def cd_target(self, teacher: Callable, x, z, i, N):
    """x̂_{σ_i}: one Heun step of the EDM teacher from x + σ_{i+1}z at σ_{i+1} down to σ_i."""
    x = jnp.asarray(x, _F32)
    bc = (x.shape[0],) + (1,) * (x.ndim - 1)
    s_hi = self.sigma(i + 1, N)
    return heun_step(teacher, x + s_hi.reshape(bc) * z, s_hi, self.sigma(i, N))

  def cd_loss_given(self, f: Callable, teacher: Callable, x, z, i, N, rng=None,
                    target_f: Callable | None = None):
    """Per-example CD loss [B]: λ(σ_i)·d(f(x + σ_{i+1}z, σ_{i+1}), sg[target_f(x̂_{σ_i}, σ_i)]);
    target_f defaults to f itself (stop-gradient, as iCT; pass an EMA's f for the 2023 recipe)."""
    x = jnp.asarray(x, _F32)
    bc = (x.shape[0],) + (1,) * (x.ndim - 1)
    s_hi, s_lo = self.sigma(i + 1, N), self.sigma(i, N)
    student = f(x + s_hi.reshape(bc) * z, s_hi, rng)
    x_hat = jax.lax.stop_gradient(self.cd_target(teacher, x, z, i, N))
    target = jax.lax.stop_gradient((target_f or f)(x_hat, s_lo, rng))
    return self.weight(i, N) * pseudo_huber(student, target, self._c(x))

  def cd_loss(self, f: Callable, teacher: Callable, x, key, N, rng=None,
              target_f: Callable | None = None):
    """Per-example CD loss [B] with z and i drawn as in `ct_loss`."""
    kz, ki = jax.random.split(key)
    x = jnp.asarray(x, _F32)
    z = jax.random.normal(kz, x.shape, _F32)
    i = self.sample_index(ki, (x.shape[0],), N)
    return self.cd_loss_given(f, teacher, x, z, i, N, rng, target_f)
