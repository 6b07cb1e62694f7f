"""Timestep clustering: where to put the stage boundaries (Zhang et al. 2024, Algorithm 1), and
the two baselines the paper compares against. Pure functions of arrays (no config, no I/O).

Algorithm 1 with the EDM parameterisation (s = 1): along one noise draw x_σ = y + σ·ε, the
optimal denoiser of the training set D*(x; σ) = Σ_i softmax_i(−‖x − y_i‖²/2σ²)·y_i gives the
optimal noise prediction ε*(x_σ; σ) = (x_σ − D*(x_σ; σ))/σ. Its similarity to the ends of the σ
range is the fraction of pixels within η of ε* at the lowest σ (resp. at the highest σ), averaged
over random (y, ε). The first boundary is the largest σ whose running mean of similarity to the
lowest-σ end (over all σ up to it) stays ≥ α; the last boundary the smallest σ whose running mean
of similarity to the highest-σ end (over all σ from it upward) stays ≥ α. "Time" is ln σ on a
uniform grid (the EDM network's c_noise is ln σ / 4), so means are over ln σ.

K = 3 is the paper's case. K = 2 puts the one boundary where the two similarity curves cross;
K > 3 applies the rule again inside the middle interval (its ends as the references).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import JaxdiffError
from jaxdiff.exact import dataset_denoise

METHODS = ("optimal", "timestep", "snr")
# VP schedule of the EDM paper (β_d, β_min): the "equal t" baseline splits its t.
VP_BETA_D, VP_BETA_MIN = 19.9, 0.1


def sigma_grid(sigma_min: float, sigma_max: float, num: int) -> np.ndarray:
  return np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), num))


def optimal_eps(data, y, eps, sigmas, chunk: int = 1024, progress: bool = False) -> jax.Array:
  """ε*(y + σ ε; σ) for every σ in `sigmas`: [S, B, ...] float32 (data, y in data units)."""
  from jaxdiff.progress import bar
  data = jnp.asarray(data, jnp.float32)

  @jax.jit
  def one(sigma):
    x = y + sigma * eps
    return (x - dataset_denoise(data, x, sigma, chunk=chunk)) / sigma
  # Each σ is waited for, so the bar (on stderr) moves with the work rather than the dispatch.
  return jnp.stack([jax.block_until_ready(one(jnp.float32(s)))
                    for s in bar(sigmas, desc="cluster", unit="σ", disable=not progress)])


def similarity_curves(eps_star, eta: float, lo: int = 0, hi: int | None = None):
  """(sim to the grid point `lo`, sim to the grid point `hi`): [S] float64 each, the mean over
  (y, ε) of the fraction of pixels with |ε*_σ − ε*_ref| ≤ η."""
  e = np.asarray(eps_star, np.float64)
  hi = e.shape[0] - 1 if hi is None else hi
  axes = tuple(range(1, e.ndim))
  s_lo = np.mean(np.abs(e - e[lo][None]) <= eta, axis=axes)
  s_hi = np.mean(np.abs(e - e[hi][None]) <= eta, axis=axes)
  return s_lo, s_hi


def _split_three(s_lo, s_hi, alpha, lo, hi):
  """(last grid index of the first stage, first grid index of the last stage) on lo..hi."""
  n = hi - lo + 1
  run_lo = np.cumsum(s_lo[lo:hi + 1]) / np.arange(1, n + 1)                 # mean over [lo, τ]
  run_hi = (np.cumsum(s_hi[lo:hi + 1][::-1]) / np.arange(1, n + 1))[::-1]  # mean over [τ, hi]
  # "Stays ≥ α": the longest prefix (suffix) on which the running mean never dips below α.
  bad_lo = np.nonzero(run_lo < alpha)[0]
  bad_hi = np.nonzero(run_hi < alpha)[0]
  i1 = lo + (bad_lo[0] - 1 if bad_lo.size else n - 1)
  i2 = lo + (bad_hi[-1] + 1 if bad_hi.size else 0)
  i1, i2 = max(i1, lo), min(i2, hi)
  if i2 <= i1:  # the two end stages overlap: meet where the similarities cross
    i1 = _crossing(s_lo, s_hi, lo, hi)
    i2 = i1 + 1
  return i1, i2


def _crossing(s_lo, s_hi, lo, hi):
  d = s_lo[lo:hi + 1] - s_hi[lo:hi + 1]
  return lo + int(np.argmin(np.abs(d)))


def boundaries_from_similarity(sigmas, eps_star, num_stages: int, alpha: float, eta: float):
  """K − 1 increasing σ boundaries from ε* on the σ grid."""
  if num_stages < 2:
    raise JaxdiffError("--stages must be at least 2")
  sigmas = np.asarray(sigmas, np.float64)

  def split(lo, hi, k):
    """k − 1 grid indices in lo..hi, each the last point of the stage below a boundary."""
    if k == 1:
      return []
    if hi <= lo:
      return [lo] * (k - 1)  # spread apart below
    s_lo, s_hi = similarity_curves(eps_star, eta, lo, hi)
    if k == 2:
      return [_crossing(s_lo, s_hi, lo, hi)]
    i1, i2 = _split_three(s_lo, s_hi, alpha, lo, hi)
    return [i1] + split(i1 + 1, i2 - 1, k - 2) + [i2 - 1]

  idx = split(0, len(sigmas) - 1, num_stages)
  # A boundary at grid index i sits between i and i + 1 (geometric mean): strictly increasing.
  idx = np.maximum.accumulate(np.asarray(idx, np.int64))
  for j in range(1, len(idx)):
    idx[j] = max(idx[j], idx[j - 1] + 1)
  idx = np.minimum(idx, len(sigmas) - 2)
  if np.any(np.diff(idx) <= 0):
    raise JaxdiffError(f"the σ grid is too coarse for {num_stages} stages; raise --grid")
  return [float(np.sqrt(sigmas[i] * sigmas[i + 1])) for i in idx]


def optimal_boundaries(data, num_stages: int, *, sigma_min: float, sigma_max: float,
                       alpha: float = 0.9, eta: float = 2 / 255, grid: int = 64,
                       num_samples: int = 256, seed: int = 0, progress: bool = False) -> dict:
  """Algorithm 1 on `data` ([N, ...] in [-1, 1]); returns boundaries and the similarity curves."""
  data = np.asarray(data, np.float32)
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, data.shape[0], num_samples)
  y = jnp.asarray(data[idx])
  eps = jnp.asarray(rng.standard_normal(y.shape).astype(np.float32))
  sigmas = sigma_grid(sigma_min, sigma_max, grid)
  eps_star = optimal_eps(data, y, eps, sigmas, progress=progress)
  b = boundaries_from_similarity(sigmas, eps_star, num_stages, alpha, eta)
  s_lo, s_hi = similarity_curves(eps_star, eta)
  return dict(boundaries_sigma=b, sigmas=sigmas.tolist(), similarity_low=s_lo.tolist(),
              similarity_high=s_hi.tolist())


def vp_sigma_np(t):
  return np.sqrt(np.exp(0.5 * VP_BETA_D * np.square(t) + VP_BETA_MIN * t) - 1)


def vp_t_np(sigma):
  """Inverse of σ_VP(t)."""
  return (np.sqrt(VP_BETA_MIN**2 + 2 * VP_BETA_D * np.log1p(np.square(sigma))) - VP_BETA_MIN) / VP_BETA_D


def timestep_boundaries(num_stages: int, *, sigma_min: float, sigma_max: float) -> list:
  """Equal split of the VP time t over [t(σ_min), t(σ_max)] (the paper's "equal t" baseline)."""
  t = np.linspace(vp_t_np(sigma_min), vp_t_np(sigma_max), num_stages + 1)[1:-1]
  return [float(v) for v in vp_sigma_np(t)]


def snr_boundaries(num_stages: int, *, sigma_min: float, sigma_max: float) -> list:
  """Equal split of log-SNR = −2 ln σ over [σ_min, σ_max] (geometric spacing in σ)."""
  return [float(v) for v in sigma_grid(sigma_min, sigma_max, num_stages + 1)[1:-1]]
