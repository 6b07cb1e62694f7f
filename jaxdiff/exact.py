"""Exact denoisers D(x; σ) = E[y | y + σn = x]: a Gaussian mixture and a finite data set.

Used to verify samplers and preconditionings without a trained network, by the sampler
benchmark, and by multi-stage timestep clustering (the optimal denoiser of the training set).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from jaxdiff.errors import JaxdiffError


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """Σ_k π_k N(μ_k, Σ_k) in d dimensions, stored with each Σ_k = U_k diag(λ_k) U_kᵀ.

  Build with `GaussianMixture.create(weights [K], means [K, d], covs [K, d, d])`. A pytree, so it
  can be a jit argument or a closed-over constant.
  """
  log_weights: jax.Array  # [K]
  means: jax.Array  # [K, d]
  eigvecs: jax.Array  # [K, d, d], columns are eigenvectors
  eigvals: jax.Array  # [K, d]

  @staticmethod
  def create(weights, means, covs, dtype=jnp.float32) -> "GaussianMixture":
    weights = np.asarray(weights, np.float64)
    means = np.asarray(means, np.float64)
    covs = np.asarray(covs, np.float64)
    K, d = means.shape
    if weights.shape != (K,) or covs.shape != (K, d, d):
      raise JaxdiffError(f"mixture needs weights [K], means [K, d], covs [K, d, d]; got "
                         f"{weights.shape}, {means.shape}, {covs.shape}")
    if np.any(weights <= 0):
      raise JaxdiffError("mixture weights must be positive")
    lam, U = np.linalg.eigh(0.5 * (covs + np.swapaxes(covs, 1, 2)))
    if np.any(lam < -1e-10 * np.max(np.abs(lam))):
      raise JaxdiffError("mixture covariances must be positive semi-definite")
    lam = np.clip(lam, 0, None)
    return GaussianMixture(jnp.asarray(np.log(weights / weights.sum()), dtype),
                           jnp.asarray(means, dtype), jnp.asarray(U, dtype), jnp.asarray(lam, dtype))

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  def denoise(self, x, sigma):
    """E[y | x] for x = y + σn: Σ_k w_k(x)·(μ_k + Σ_k(Σ_k + σ²I)⁻¹(x − μ_k)), w from p_σ(x | k).

    x: [B, ...] with prod(...) = d; sigma: scalar or [B]. Returns x's shape and dtype.
    """
    x = jnp.asarray(x)
    shape, B = x.shape, x.shape[0]
    xf = x.reshape(B, -1).astype(self.means.dtype)
    var = jnp.broadcast_to(jnp.asarray(sigma, xf.dtype).reshape(-1), (B,))[:, None, None] ** 2
    z = jnp.einsum("kdj,bkd->bkj", self.eigvecs, xf[:, None, :] - self.means[None])  # [B, K, d]
    tot = self.eigvals[None] + var  # [B, K, d]
    logp = self.log_weights[None] - 0.5 * jnp.sum(z**2 / tot + jnp.log(tot), axis=-1)
    w = jax.nn.softmax(logp, axis=-1)  # [B, K]
    post = self.means[None] + jnp.einsum("kdj,bkj->bkd", self.eigvecs, self.eigvals[None] / tot * z)
    return jnp.einsum("bk,bkd->bd", w, post).reshape(shape).astype(x.dtype)

  def log_density(self, x, sigma):
    """log p_σ(x) of the σ-diffused mixture Σ_k π_k N(μ_k, Σ_k + σ²I), normalised.

    x: [B, ...] with prod(...) = d; sigma: scalar or [B]. Returns [B] in the mixture's dtype
    (build the mixture with dtype=float64 under jax x64 for differences of log densities).
    """
    x = jnp.asarray(x)
    B = x.shape[0]
    xf = x.reshape(B, -1).astype(self.means.dtype)
    var = jnp.broadcast_to(jnp.asarray(sigma, xf.dtype).reshape(-1), (B,))[:, None, None] ** 2
    z = jnp.einsum("kdj,bkd->bkj", self.eigvecs, xf[:, None, :] - self.means[None])  # [B, K, d]
    tot = self.eigvals[None] + var  # [B, K, d]
    logp = self.log_weights[None] - 0.5 * jnp.sum(z**2 / tot + jnp.log(2 * jnp.pi * tot), axis=-1)
    return logsumexp(logp, axis=-1)

  def sample(self, key, n: int):
    """n true samples [n, d]."""
    kc, kz = jax.random.split(key)
    comp = jax.random.categorical(kc, self.log_weights, shape=(n,))
    z = jax.random.normal(kz, (n, self.dim), self.means.dtype)
    scaled = jnp.einsum("ndj,nj->nd", self.eigvecs[comp], jnp.sqrt(self.eigvals[comp]) * z)
    return self.means[comp] + scaled


def random_mixture(seed: int, dim: int, num_components: int, spread: float = 1.0,
                   scale: float = 0.3) -> GaussianMixture:
  """A reproducible mixture with random means (±spread), random full covariances and weights."""
  rng = np.random.default_rng(seed)
  means = rng.uniform(-spread, spread, (num_components, dim))
  A = rng.normal(size=(num_components, dim, dim)) * scale / np.sqrt(dim)
  covs = A @ np.swapaxes(A, 1, 2) + 0.01 * scale**2 * np.eye(dim)
  weights = rng.uniform(0.5, 1.5, num_components)
  return GaussianMixture.create(weights, means, covs)


def dataset_denoise(data, x, sigma, chunk: int = 1024):
  """Optimal denoiser of a finite data set: D(x; σ) = Σ_i softmax_i(−‖x − y_i‖²/(2σ²))·y_i.

  data: [N, ...]; x: [B, ...] (same trailing shape); sigma: scalar or [B]. The points are visited
  in chunks of `chunk` with a running log-sum-exp (streaming softmax), so memory is O(B·chunk)
  whatever N; the squared distances drop ‖x‖² (constant over i) and use ‖y‖² − 2x·y.
  """
  data = jnp.asarray(data)
  x = jnp.asarray(x)
  shape, B, N = x.shape, x.shape[0], data.shape[0]
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  xf = x.reshape(B, -1).astype(dtype)
  yf = data.reshape(N, -1).astype(dtype)
  if yf.shape[1] != xf.shape[1]:
    raise JaxdiffError(f"data points {data.shape[1:]} and queries {x.shape[1:]} differ in shape")
  chunk = int(min(chunk, N))
  pad = (-N) % chunk
  yf = jnp.pad(yf, ((0, pad), (0, 0)))
  valid = jnp.arange(N + pad) < N
  y_chunks = yf.reshape(-1, chunk, yf.shape[1])
  v_chunks = valid.reshape(-1, chunk)
  inv2s2 = 1 / (2 * jnp.broadcast_to(jnp.asarray(sigma, dtype).reshape(-1), (B,)) ** 2)

  def body(carry, inp):
    m, s, acc = carry
    y, v = inp
    logits = (2 * xf @ y.T - jnp.sum(y**2, axis=1)[None]) * inv2s2[:, None]
    logits = jnp.where(v[None], logits, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(logits, axis=1))
    scale = jnp.exp(m - m_new)
    p = jnp.exp(logits - m_new[:, None])
    return (m_new, s * scale + p.sum(1), acc * scale[:, None] + p @ y), None

  init = (jnp.full((B,), -jnp.inf, dtype), jnp.zeros((B,), dtype), jnp.zeros_like(xf))
  (m, s, acc), _ = jax.lax.scan(body, init, (y_chunks, v_chunks))
  return (acc / s[:, None]).reshape(shape).astype(x.dtype)
