"""Optimized time steps: GITS (Chen et al., "On the Trajectory Regularity of ODE-based Diffusion
Sampling", ICML 2024; zju-pi/diff-sampler `gits`).

The sampling trajectories of one model are regular enough that one σ grid, searched once on a few
hundred latents, serves all of them. GITS searches it by dynamic programming:

1. a fine grid: the Karras grid of `fine_steps` points on [σ_min, σ_max] (ρ = 7) plus σ = 0;
2. a teacher trajectory X_0 … X_M at those points from the same latents: Heun with
   `teacher_substeps` steps per fine interval (the finer Karras grid that contains the fine grid),
   and, as every solver here does, the last step σ_min → 0 is x = D(x; σ_min);
3. a cost c_ij (i < j) = mean over the latents of ‖Φ(X_i; σ_i → σ_j) − X_j‖₂: the paper's cost,
   the distance of one coarse step started on the teacher trajectory from the teacher's point.
   Φ is the paper's Euler step x + (σ_j − σ_i)·(x − D(x; σ_i))/σ_i (`cost="euler"`, the default for
   every solver but Heun: a multistep solver's step depends on the path, which a DP cannot see; the
   paper searches with this first-order cost and samples with any solver), or a Heun step
   (`cost="heun"`, the default for solver "heun", where the DP is then exact);
4. the path 0 = p_0 < p_1 < … < p_K = M with exactly K edges of least total cost (DP over
   V_k(j) = min_i V_{k−1}(i) + c_ij), whose σ's are the grid.

NFE → steps: K = NFE for the single-evaluation solvers (euler, dpmpp_*, ipndm, unipc,
euler_ancestral); K = ⌊(NFE + 1)/2⌋ for Heun (2K − 1 evaluations, no correction on the step to 0).
The result is a float64 NumPy grid of K + 1 decreasing σ's ending at 0, for
`sampling.sample(..., num_steps=K, sigmas=grid)`. `save_schedule` / `load_schedule` write and read
it as JSON with the checks the sampler applies.
"""

from __future__ import annotations

import json
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import sampling, schedules
from jaxdiff.errors import JaxdiffError

COSTS = ("euler", "heun")


def steps_for_nfe(solver: str, nfe: int) -> int:
  """The most steps whose NFE fits the budget: (nfe + 1) // 2 for Heun, nfe otherwise."""
  sampling._check_solver(solver)
  if solver == "consistency":
    raise JaxdiffError("time-step search is for the ODE solvers; 'consistency' takes its noise "
                       "levels from the config or sigmas=")
  if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
    raise JaxdiffError(f"nfe must be an integer >= 1, got {nfe!r}")
  return (int(nfe) + 1) // 2 if solver == "heun" else int(nfe)


def fine_grid(fine_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
              rho: float = 7.0) -> np.ndarray:
  """The Karras grid of `fine_steps` points on [σ_min, σ_max], then 0 (float64)."""
  return np.append(schedules.sigma_steps("edm", int(fine_steps), sigma_min, sigma_max, rho), 0.0)


def teacher_trajectory(denoise: Callable, latents, fine_sigmas: np.ndarray, substeps: int = 4):
  """Heun with `substeps` steps per interval of `fine_sigmas` (σ_0 > … > σ_{M−1} > σ_M = 0).

  The substeps subdivide each interval linearly in σ^{1/7} (for a Karras fine grid: the finer
  Karras grid); the last interval (to σ = 0) is one step x = D(x; σ_{M−1}). Returns (X [M+1, B, ...],
  Dx [M, B, ...]): the states at the fine points and D(X_i; σ_i) for i < M, in the latents' dtype.
  """
  s = np.asarray(fine_sigmas, np.float64)
  r = int(substeps)
  u = s[:-1] ** (1 / 7)
  sub = [u[i] + (u[i + 1] - u[i]) * np.arange(r) / r for i in range(len(u) - 1)]
  fine_t = np.concatenate(sub + [u[-1:]]) ** 7  # every r-th entry is s[i] (recomputed: set exactly)
  fine_t[::r] = s[:-1]
  lat = jnp.asarray(latents)
  dtype = lat.dtype
  B = lat.shape[0]
  t_cur = jnp.asarray(fine_t[:-1], dtype)
  t_next = jnp.asarray(fine_t[1:], dtype)

  def den(x, sigma):
    return jnp.asarray(denoise(x, jnp.full((B,), sigma, dtype)), dtype)

  @jax.jit
  def run(lat):
    def step(x, ts):
      tc, tn = ts
      Dc = den(x, tc)
      d = (x - Dc) / tc
      xe = x + (tn - tc) * d
      x_new = x + (tn - tc) * 0.5 * (d + (xe - den(xe, tn)) / tn)
      return x_new, (x, Dc)

    x0 = lat * jnp.asarray(s[0], dtype)
    x_last, (xs, Ds) = jax.lax.scan(step, x0, (t_cur, t_next))
    D_last = den(x_last, jnp.asarray(s[-2], dtype))
    X = jnp.concatenate([xs[::r], x_last[None], D_last[None]])
    Dx = jnp.concatenate([Ds[::r], D_last[None]])
    return X, Dx

  return run(lat)


def cost_matrix(denoise: Callable, X, Dx, fine_sigmas: np.ndarray, cost: str = "euler",
                progress: Callable | None = None):
  """c[i, j] = mean_b ‖Φ(X_i; σ_i → σ_j) − X_j‖₂ for i < j (inf elsewhere), float64 [M+1, M+1].
  `progress` wraps the iterable of rows (e.g. a progress bar)."""
  if cost not in COSTS:
    raise JaxdiffError(f"unknown cost {cost!r}; choose one of {', '.join(COSTS)}")
  s = np.asarray(fine_sigmas, np.float64)
  M = len(s) - 1
  X = jnp.asarray(X)
  dtype = X.dtype
  B = X.shape[1]
  sig = jnp.asarray(s, dtype)
  flat = lambda v: v.reshape(v.shape[0], B, -1)

  @jax.jit
  def row(i):
    x, Dc, si = X[i], Dx[i], sig[i]
    d = (x - Dc) / si
    h = (sig - si).reshape((M + 1,) + (1,) * x.ndim)
    xe = x[None] + h * d[None]  # Euler to every σ_j; to σ_M = 0 this is D(X_i; σ_i)
    if cost == "heun":
      def corr(args):
        xj, sj, hj = args
        safe = jnp.where(sj > 0, sj, 1.0)
        dj = (xj - jnp.asarray(denoise(xj, jnp.full((B,), safe, dtype)), dtype)) / safe
        return jnp.where(sj > 0, x + hj * 0.5 * (d + dj), xj)
      xe = jax.lax.map(corr, (xe, sig, sig - si))
    return jnp.mean(jnp.linalg.norm(flat(xe - X), axis=-1), axis=-1)

  C = np.full((M + 1, M + 1), np.inf)
  rows = range(M) if progress is None else progress(range(M))
  for i in rows:
    C[i, i + 1:] = np.asarray(row(i), np.float64)[i + 1:]
  return C


def min_cost_path(C: np.ndarray, num_edges: int):
  """The path 0 = p_0 < … < p_K = M (K = num_edges) minimising Σ_k C[p_{k−1}, p_k], by DP.

  Returns (indices [K + 1], total cost). C: [M + 1, M + 1] with inf where an edge is not allowed.
  """
  C = np.asarray(C, np.float64)
  M = C.shape[0] - 1
  K = int(num_edges)
  if not 1 <= K <= M:
    raise JaxdiffError(f"need 1 <= steps <= {M} (the fine grid's intervals), got {K}; use more "
                       "fine_steps or fewer steps")
  V = np.full(M + 1, np.inf)
  V[0] = 0.0
  back = np.zeros((K + 1, M + 1), np.int64)
  for k in range(1, K + 1):
    tot = V[:, None] + C  # [i, j]
    back[k] = np.argmin(tot, axis=0)
    V = tot[back[k], np.arange(M + 1)]
  path = [M]
  for k in range(K, 0, -1):
    path.append(int(back[k, path[-1]]))
  return np.array(path[::-1]), float(V[M])


def gits_sigmas(denoise: Callable, latents, solver: str = "ipndm", nfe: int = 8, *,
                fine_steps: int = 100, sigma_min: float = 0.002, sigma_max: float = 80.0,
                rho: float = 7.0, teacher_substeps: int = 4, cost: str | None = None,
                progress: Callable | None = None, cache: dict | None = None):
  """GITS time steps for `solver` at `nfe` evaluations; see the module docstring.

  denoise(x [B, ...], sigma [B]) -> D(x; σ), latents [B, ...] ~ N(0, I) (the teacher and the
  coarse steps start from latents·σ_max). `progress` wraps the cost matrix's rows. Returns (sigmas float64 [K + 1] ending at 0, info dict
  with the fine-grid indices, the DP cost and the cost of the Karras grid's indices for reference).
  `cache`: a dict the caller keeps for one (denoise, latents) pair; the teacher trajectory and the
  cost matrix are computed once per fine grid and cost kind, and each further call is only the DP.
  """
  K = steps_for_nfe(solver, nfe)
  cost = cost or ("heun" if solver == "heun" else "euler")
  if isinstance(fine_steps, bool) or not isinstance(fine_steps, (int, np.integer)) or fine_steps < 2:
    raise JaxdiffError(f"fine_steps must be an integer >= 2, got {fine_steps!r}")
  if K > fine_steps:
    raise JaxdiffError(f"{K} steps need fine_steps >= {K}, got {fine_steps}")
  s = fine_grid(fine_steps, sigma_min, sigma_max, rho)
  cache = {} if cache is None else cache
  grid_key = (int(fine_steps), float(sigma_min), float(sigma_max), float(rho), int(teacher_substeps))
  if grid_key not in cache:
    cache[grid_key] = teacher_trajectory(denoise, latents, s, teacher_substeps)
  X, Dx = cache[grid_key]
  if grid_key + (cost,) not in cache:
    cache[grid_key + (cost,)] = cost_matrix(denoise, X, Dx, s, cost, progress)
  path, total = min_cost_path(cache[grid_key + (cost,)], K)
  return s[path], {"method": "gits", "solver": solver, "nfe": int(nfe), "num_steps": K,
                   "cost": cost, "fine_steps": int(fine_steps), "indices": path.tolist(),
                   "dp_cost": total}


# ---------------------------------------------------------------- schedule files
def check_sigmas(sigmas, num_steps: int | None = None, what: str = "sigmas") -> np.ndarray:
  """float64 copy of a grid, after the sampler's checks (length, finite, decreasing, last 0)."""
  sig = np.asarray(sigmas, np.float64)
  if sig.ndim != 1 or sig.size < 2:
    raise JaxdiffError(f"{what} must be a list of at least 2 noise levels, got shape {sig.shape}")
  if num_steps is not None and sig.size != num_steps + 1:
    raise JaxdiffError(f"{what} holds {sig.size} noise levels ({sig.size - 1} steps) but "
                       f"{num_steps} steps need {num_steps + 1}; search a schedule for {num_steps} steps")
  if not (np.all(np.isfinite(sig)) and sig[-1] == 0 and np.all(np.diff(sig) < 0)):
    raise JaxdiffError(f"{what} must be finite, strictly decreasing and end at 0")
  return sig


def save_schedule(path: str, sigmas, info: dict | None = None):
  """Writes {"sigmas": [...], "num_steps": K, **info} as JSON."""
  sig = check_sigmas(sigmas)
  rec = dict(info or {})
  rec.update(sigmas=[float(v) for v in sig], num_steps=int(sig.size - 1))
  from jaxdiff.fileio import atomic_write_text
  atomic_write_text(path, json.dumps(rec, indent=1))


def load_schedule(path: str, num_steps: int | None = None) -> tuple[np.ndarray, dict]:
  """(sigmas float64, the whole record) from `save_schedule`'s file, checked."""
  try:
    with open(path) as f:
      rec = json.load(f)
  except (OSError, ValueError) as e:
    raise JaxdiffError(f"cannot read schedule file {path}: {e}") from None
  if not isinstance(rec, dict) or "sigmas" not in rec:
    raise JaxdiffError(f"schedule file {path} has no 'sigmas' list; write it with jaxdiff schedule")
  try:
    sig = check_sigmas(rec["sigmas"], num_steps, what=f"schedule {path}")
  except (TypeError, ValueError):
    raise JaxdiffError(f"schedule file {path}: 'sigmas' must be a list of numbers") from None
  return sig, rec


def path_error(denoise: Callable, latents, solver: str, sigmas, reference) -> float:
  """RMS over the latents of ‖sample(solver, sigmas) − reference‖₂ (reference: a converged solve)."""
  sig = check_sigmas(sigmas)
  x = jax.jit(lambda l: sampling.sample(denoise, l, solver, len(sig) - 1, sigmas=sig))(latents)
  diff = jnp.asarray(x, jnp.float32) - jnp.asarray(reference, jnp.float32)
  return float(jnp.sqrt(jnp.mean(jnp.sum(diff.reshape(diff.shape[0], -1) ** 2, -1))))

