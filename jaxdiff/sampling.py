"""Samplers over a σ grid, each one compiled loop (EDM, Karras et al. 2022, and fast ODE solvers).

`sample(denoise, latents, solver=...)` with `denoise(x, sigma[B]) -> D(x; σ)`:

- "euler", "heun": EDM Algorithm 2 (stochastic with S_churn > 0), generalised to the reference's
  ablation sampler: `discretization` edm / vp / ve / iddpm, `schedule` linear / vp / ve,
  `scaling` none / vp, and Heun's `alpha`, so every row of the EDM sampler ablation is a configuration.
- "dpmpp_2m": DPM-Solver++(2M) (Lu et al. 2022) in EDM's σ parameterisation (data prediction,
  λ = −ln σ, second order from the previous step's D; first order on the first and last step).
- "ipndm": improved PNDM (Zhang & Chen 2023): Adams–Bashforth on dx/dσ = (x − D)/σ with orders 1..4
  warm-started from the previous d's.
- "unipc": UniPC-2 (Zhao et al. 2023; B(h) = expm1(−h), data prediction): the DPM-Solver++(2M)
  predictor plus the UniC corrector, which reuses the next step's D, so NFE stays N.
- "euler_ancestral": Euler to σ_down plus fresh noise σ_up (η = 1 by default).
- "dpmpp_3m": DPM-Solver++(3M) (Lu et al. 2022; k-diffusion's `sample_dpmpp_3m_sde` with η = 0):
  data prediction in λ = −ln σ, third order from the two previous D's (order 1, 2, 3 warm-up).
- "dpmpp_2m_sde", "dpmpp_3m_sde": k-diffusion's DPM-Solver++(2M) SDE (solver_type "midpoint") and
  (3M) SDE: the same multistep updates with e^{−(1+η)h} decay plus fresh noise
  σ_{i+1}·√(1 − e^{−2ηh})·s_noise·ε (η = `eta`, default 1; η = 0 gives the ODE solvers).
- "consistency": multistep consistency sampling (Song et al. 2023, Algorithm 1) with `denoise` the
  consistency function f(x, σ): x = f(σ_0·z, σ_0), then x ← f(x + √(τ_n² − σ_min²)·ε, τ_n).

`sigmas=` (num_steps + 1 decreasing noise levels ending at 0, e.g. from `jaxdiff.timesteps`)
replaces the discretization for every solver.

The grid and every per-step coefficient are computed on the host in float64 from Python numbers
before tracing, so they are compile-time constants: the caller jits a function of (latents, key,
params) and a new seed / new labels never recompile. Noise is drawn per sample from that sample's
own key (`key` is one key, split over the batch, or a batch of keys [B]) folded with the step index,
so with per-sample keys a sample does not depend on which batch it was drawn in.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import schedules
from jaxdiff.errors import JaxdiffError

SOLVERS = ("euler", "heun", "euler_ancestral", "dpmpp_2m", "ipndm", "unipc", "dpmpp_3m",
           "dpmpp_2m_sde", "dpmpp_3m_sde", "consistency")
_ABLATION_SOLVERS = ("euler", "heun")


# ---------------------------------------------------------------- validation (before any tracing)
def _check_solver(solver):
  if solver not in SOLVERS:
    raise JaxdiffError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")


def _check_steps(num_steps):
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise JaxdiffError(f"num_steps must be an integer >= 1, got {num_steps!r}")


def _number(name, value):
  """A static float: Python / NumPy numbers and concrete 0-d arrays; tracers are refused."""
  ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
  ok = ok or (isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0
              and not isinstance(value, jax.core.Tracer))
  if not ok:
    raise JaxdiffError(f"{name} must be a Python number (a static value, not traced), "
                       f"got {type(value).__name__}")
  return float(value)


def _check_range(sigma_min, sigma_max):
  sigma_min, sigma_max = _number("sigma_min", sigma_min), _number("sigma_max", sigma_max)
  if not (0 < sigma_min < sigma_max < math.inf):
    raise JaxdiffError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, "
                       f"sigma_max={sigma_max}; pass a valid noise range")
  return sigma_min, sigma_max


def nfe(solver: str, num_steps: int) -> int:
  """Network evaluations of one run: 2N − 1 for Heun (no correction at σ = 0), N otherwise."""
  _check_solver(solver)
  _check_steps(num_steps)
  return 2 * num_steps - 1 if solver == "heun" else num_steps


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0, dtype=jnp.float32):
  """EDM's grid σ_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i < N, then σ_N = 0.

  Returns num_steps + 1 decreasing noise levels (computed in float64, returned as `dtype`).
  """
  _check_steps(num_steps)
  sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
  grid = schedules.sigma_steps("edm", int(num_steps), sigma_min, sigma_max, _number("rho", rho))
  return jnp.asarray(np.append(grid, 0.0), dtype)


# ---------------------------------------------------------------- keys and noise
def sample_keys(key, batch: int):
  """Per-sample keys [B] from one key (split over the batch) or from a batch of keys (kept)."""
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  single_ndim = 0 if typed else 1
  if key.ndim == single_ndim:
    return jax.random.split(key, batch)
  if key.ndim == single_ndim + 1 and key.shape[0] == batch:
    return key
  raise JaxdiffError(f"key must be one PRNG key or a batch of {batch} keys, got shape {key.shape}")


def sample_latents(keys, shape, dtype=jnp.float32):
  """Latents N(0, I) of shape [B, *shape], sample b drawn from keys[b] alone (batch-independent)."""
  return jax.vmap(lambda k: jax.random.normal(k, tuple(shape), dtype))(keys)


def _step_noise(keys, i, shape, dtype):
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), shape, dtype))(keys)


# ---------------------------------------------------------------- host-side plan
class _Grid(NamedTuple):
  t_steps: np.ndarray  # [N + 1], t_N = 0 (t = σ for the linear schedule)
  sched: schedules.TimeSchedule
  scal: schedules.Scaling


def _host_round(round_sigma, sigma):
  if round_sigma is None:
    return sigma
  with jax.ensure_compile_time_eval():
    return np.asarray(round_sigma(sigma), np.float64)


def _make_grid(num_steps, sigma_min, sigma_max, rho, discretization, schedule, scaling, epsilon_s,
               C_1, C_2, M, round_sigma):
  if discretization not in schedules.DISCRETIZATIONS:
    raise JaxdiffError(f"unknown discretization {discretization!r}; choose one of "
                       f"{', '.join(schedules.DISCRETIZATIONS)}")
  default_min, default_max = schedules.default_sigma_range(discretization, epsilon_s)
  sigma_min = default_min if sigma_min is None else sigma_min
  sigma_max = default_max if sigma_max is None else sigma_max
  sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
  sched = schedules.make_schedule(schedule, sigma_min, sigma_max, epsilon_s)
  scal = schedules.make_scaling(scaling)
  sig = schedules.sigma_steps(discretization, int(num_steps), sigma_min, sigma_max,
                              _number("rho", rho), epsilon_s, C_1, C_2, M)
  t = sched.sigma_inv(_host_round(round_sigma, sig))
  return _Grid(np.append(t, 0.0), sched, scal)


def _explicit_grid(sigmas, num_steps, sigma_min, sigma_max, discretization, schedule, scaling,
                   epsilon_s, round_sigma):
  """The grid of a caller's `sigmas` (σ_0 > ... > σ_{N−1} > σ_N = 0), checked on the host."""
  if isinstance(sigmas, jax.core.Tracer):
    raise JaxdiffError("sigmas must be a concrete array (a static value, not traced)")
  sig = np.asarray(sigmas, np.float64)
  if sig.ndim != 1 or len(sig) != num_steps + 1:
    raise JaxdiffError(f"sigmas must hold num_steps + 1 = {num_steps + 1} noise levels, got shape "
                       f"{sig.shape}; pass num_steps={max(sig.size - 1, 1)} or another grid")
  if not (np.all(np.isfinite(sig)) and sig[-1] == 0 and np.all(np.diff(sig) < 0)):
    raise JaxdiffError("sigmas must be finite, strictly decreasing and end at 0, got "
                       f"{np.array2string(sig, precision=4, threshold=8)}")
  if discretization not in schedules.DISCRETIZATIONS:
    raise JaxdiffError(f"unknown discretization {discretization!r}; choose one of "
                       f"{', '.join(schedules.DISCRETIZATIONS)}")
  default_min, default_max = schedules.default_sigma_range(discretization, epsilon_s)
  sigma_min = default_min if sigma_min is None else sigma_min
  sigma_max = default_max if sigma_max is None else sigma_max
  sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
  sched = schedules.make_schedule(schedule, sigma_min, sigma_max, epsilon_s)
  t = sched.sigma_inv(_host_round(round_sigma, sig[:-1]))
  return _Grid(np.append(t, 0.0), sched, schedules.make_scaling(scaling))


def _const(a, dtype):
  return jnp.asarray(np.asarray(a, np.float64), dtype)


# ---------------------------------------------------------------- the samplers
def sample(denoise: Callable, latents, solver: str = "heun", num_steps: int = 18,
           sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
           s_churn: float = 0.0, s_min: float = 0.0, s_max: float = float("inf"),
           s_noise: float = 1.0, key=None, *, discretization: str = "edm",
           schedule: str = "linear", scaling: str = "none", alpha: float = 1.0,
           epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
           round_sigma: Callable | None = None, eta: float = 1.0, sigmas=None):
  """Runs `solver` from latents·σ_0 (·s(t_0)) down to σ = 0; returns x_0 in the latents' dtype.

  denoise(x [B, ...], sigma [B]) -> D(x; σ). sigma_min / sigma_max default to the
  discretization's reference range (0.002 / 80 for edm). `round_sigma` (e.g. a preconditioning's)
  rounds the grid to noise levels the network supports. All options must be Python values.
  `sigmas` (num_steps + 1 decreasing values ending at 0, NumPy or concrete) replaces the
  discretization's grid for every solver. For "consistency", `denoise` is the consistency
  function, sigma_min is its ε (noise √(τ² − ε²) is added before each later evaluation), and the
  default grid is the num_steps largest points of the (num_steps + 1)-point discretization.
  """
  _check_solver(solver)
  _check_steps(num_steps)
  s_churn, s_min, s_max, s_noise = (_number(n, v) for n, v in (
      ("s_churn", s_churn), ("s_min", s_min), ("s_max", s_max), ("s_noise", s_noise)))
  alpha, eta = _number("alpha", alpha), _number("eta", eta)
  if not 0 < alpha <= 1:
    raise JaxdiffError(f"alpha must be in (0, 1], got {alpha}")
  if s_churn < 0:
    raise JaxdiffError(f"s_churn must be >= 0, got {s_churn}")
  if solver not in _ABLATION_SOLVERS:
    if (schedule, scaling, alpha) != ("linear", "none", 1.0):
      raise JaxdiffError(f"solver {solver!r} runs on the σ grid only; schedule/scaling/alpha "
                         "options need solver 'euler' or 'heun'")
    if s_churn > 0:
      raise JaxdiffError(f"S_churn applies to 'euler'/'heun' only, not {solver!r}; set s_churn=0")
  if sigmas is not None:
    grid = _explicit_grid(sigmas, int(num_steps), sigma_min, sigma_max, discretization, schedule,
                          scaling, epsilon_s, round_sigma)
  elif solver == "consistency":  # drop the grid's σ_min: f(·, σ_min) is the identity
    grid = _make_grid(num_steps + 1, sigma_min, sigma_max, rho, discretization, schedule, scaling,
                      epsilon_s, C_1, C_2, M, round_sigma)
    grid = grid._replace(t_steps=np.append(grid.t_steps[:-2], 0.0))
  else:
    grid = _make_grid(num_steps, sigma_min, sigma_max, rho, discretization, schedule, scaling,
                      epsilon_s, C_1, C_2, M, round_sigma)
  latents = jnp.asarray(latents)
  if not jnp.issubdtype(latents.dtype, jnp.floating):
    latents = latents.astype(jnp.float32)
  if solver in _ABLATION_SOLVERS:
    return _edm_sampler(denoise, latents, grid, solver == "heun", alpha, int(num_steps),
                        s_churn, s_min, s_max, s_noise, key, round_sigma)
  sig = grid.t_steps  # linear schedule: t = σ
  if solver == "euler_ancestral":
    return _euler_ancestral(denoise, latents, sig, s_noise, eta, key)
  if solver in ("dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde"):
    order = 2 if solver == "dpmpp_2m_sde" else 3
    return _dpmpp_sde(denoise, latents, sig, order, 0.0 if solver == "dpmpp_3m" else eta,
                      s_noise, key, solver)
  if solver == "consistency":
    eps = schedules.default_sigma_range(discretization, epsilon_s)[0] if sigma_min is None else sigma_min
    return _consistency(denoise, latents, sig, _number("sigma_min", eps), s_noise, key)
  fn = {"dpmpp_2m": _dpmpp_2m, "ipndm": _ipndm, "unipc": _unipc}[solver]
  return fn(denoise, latents, sig)


def _denoiser(denoise, x_ref):
  batch, dtype = x_ref.shape[0], x_ref.dtype

  def den(x, sigma):
    return jnp.asarray(denoise(x, jnp.full((batch,), sigma, dtype)), dtype)
  return den


def _edm_sampler(denoise, latents, grid, heun, alpha, N, s_churn, s_min, s_max, s_noise, key,
                 round_sigma):
  """EDM Algorithm 2 in the reference ablation sampler's general form (σ(t), s(t)).

  dx/dt = (σ'/σ + s'/s)·x − σ'·s/σ·D(x/s; σ). Churn raises t_i to t̂_i; Euler to t_{i+1}, then
  (Heun) a second evaluation at t̂_i + α·h, except on the last step (σ_N = 0).
  """
  dtype = latents.dtype
  sched, scal = grid.sched, grid.scal
  t_cur, t_next = grid.t_steps[:-1], grid.t_steps[1:]
  sig_cur = sched.sigma(t_cur)
  gamma = np.where((s_min <= sig_cur) & (sig_cur <= s_max),
                   min(s_churn / N, math.sqrt(2) - 1), 0.0)
  t_hat = sched.sigma_inv(_host_round(round_sigma, sig_cur * (1 + gamma)))
  sig_hat, s_hat = sched.sigma(t_hat), scal.s(t_hat, sched)
  x_scale = s_hat / scal.s(t_cur, sched)
  noise_scale = np.sqrt(np.clip(sig_hat**2 - sig_cur**2, 0, None)) * s_hat * s_noise
  stochastic = bool(np.any(noise_scale > 0))
  h = t_next - t_hat

  def d_coef(t):  # d = A·x − B·D
    sig, sd, s, sdv = sched.sigma(t), sched.sigma_deriv(t), scal.s(t, sched), scal.s_deriv(t, sched)
    return sd / sig + sdv / s, sd * s / sig, 1 / s, sig

  A1, B1, in1, sg1 = (_const(a, dtype) for a in d_coef(t_hat))
  # Second-order point t' = t̂ + α·h; the last step never uses it (t' may be 0 there).
  t_p = np.where(np.arange(N) < N - 1, t_hat + alpha * h, t_hat)
  A2, B2, in2, sg2 = (_const(a, dtype) for a in d_coef(t_p))
  x_scale_c, noise_c, h_c = _const(x_scale, dtype), _const(noise_scale, dtype), _const(h, dtype)
  keys = None
  if stochastic:
    if key is None:
      raise JaxdiffError("stochastic sampling (s_churn > 0) needs key=; pass a PRNG key")
    keys = sample_keys(key, latents.shape[0])
  den = _denoiser(denoise, latents)
  w2 = 1 / (2 * alpha)

  def step(i, x, second_order):
    x_hat = x_scale_c[i] * x
    if stochastic:
      x_hat = x_hat + noise_c[i] * _step_noise(keys, i, x.shape[1:], dtype)
    d = A1[i] * x_hat - B1[i] * den(x_hat * in1[i], sg1[i])
    if not second_order:
      return x_hat + h_c[i] * d
    x_p = x_hat + alpha * h_c[i] * d
    d_p = A2[i] * x_p - B2[i] * den(x_p * in2[i], sg2[i])
    return x_hat + h_c[i] * ((1 - w2) * d + w2 * d_p)

  t0 = grid.t_steps[:1]
  x = latents * _const(sched.sigma(t0) * scal.s(t0, sched), dtype)[0]
  x = jax.lax.fori_loop(0, N - 1, lambda i, x: step(i, x, heun), x)
  return step(N - 1, x, False)


def _euler_ancestral(denoise, latents, sig, s_noise, eta, key):
  """x ← x + (σ_down − σ_i)·(x − D)/σ_i + σ_up·ε, σ_up = min(σ_{i+1}, η√(σ_{i+1}²(σ_i²−σ_{i+1}²)/σ_i²))."""
  dtype = latents.dtype
  s_i, s_n = sig[:-1], sig[1:]
  s_up = np.minimum(s_n, eta * np.sqrt(s_n**2 * (s_i**2 - s_n**2) / s_i**2))
  s_down = np.sqrt(s_n**2 - s_up**2)
  a = s_down / s_i
  a_c, b_c, c_c, sg = (_const(v, dtype) for v in (a, 1 - a, s_up * s_noise, s_i))
  stochastic = bool(np.any(s_up > 0))
  keys = None
  if stochastic:
    if key is None:
      raise JaxdiffError("solver 'euler_ancestral' draws noise and needs key=; pass a PRNG key")
    keys = sample_keys(key, latents.shape[0])
  den = _denoiser(denoise, latents)

  def body(i, x):
    x_new = a_c[i] * x + b_c[i] * den(x, sg[i])
    if stochastic:
      x_new = x_new + c_c[i] * _step_noise(keys, i, x.shape[1:], dtype)
    return x_new

  return jax.lax.fori_loop(0, len(s_i), body, latents * sg[0])


def _dpmpp_2m(denoise, latents, sig):
  """DPM-Solver++(2M): x_{i+1} = (σ_{i+1}/σ_i)·x − expm1(−h_i)·D̃_i, λ = −ln σ, h_i = λ_{i+1} − λ_i,
  D̃_i = (1 + 1/(2r))·D_i − 1/(2r)·D_{i−1}, r = h_{i−1}/h_i; first order (D̃ = D) on the first
  step and on the last (σ_N = 0, where the update is x = D)."""
  dtype = latents.dtype
  N = len(sig) - 1
  s_i, s_n = sig[:-1], sig[1:]
  a = s_n / s_i
  b = 1 - a  # = −expm1(−h)
  c = np.zeros(N)
  lam = -np.log(sig[:-1])
  for i in range(1, N - 1):  # second-order steps
    h, h_last = lam[i + 1] - lam[i], lam[i] - lam[i - 1]
    r = h_last / h
    c[i] = -b[i] / (2 * r)
    b[i] = b[i] * (1 + 1 / (2 * r))
  a_c, b_c, c_c, sg = (_const(v, dtype) for v in (a, b, c, s_i))
  den = _denoiser(denoise, latents)

  def body(i, carry):
    x, D_prev = carry
    D = den(x, sg[i])
    return a_c[i] * x + b_c[i] * D + c_c[i] * D_prev, D

  x0 = latents * sg[0]
  x, _ = jax.lax.fori_loop(0, N, body, (x0, jnp.zeros_like(x0)))
  return x


# Adams–Bashforth weights for d_i, d_{i−1}, d_{i−2}, d_{i−3}, by order.
_AB = {1: (1.0, 0, 0, 0), 2: (1.5, -0.5, 0, 0), 3: (23 / 12, -16 / 12, 5 / 12, 0),
       4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _ipndm(denoise, latents, sig, max_order: int = 4):
  """iPNDM: x_{i+1} = x_i + (σ_{i+1} − σ_i)·Σ_k w_k d_{i−k}, d = (x − D)/σ, order min(i+1, 4)."""
  dtype = latents.dtype
  N = len(sig) - 1
  w = np.array([_AB[min(i + 1, max_order)] for i in range(N)])  # [N, 4]
  w_c, h_c, sg = _const(w, dtype), _const(sig[1:] - sig[:-1], dtype), _const(sig[:-1], dtype)
  den = _denoiser(denoise, latents)

  def body(i, carry):
    x, d1, d2, d3 = carry
    d = (x - den(x, sg[i])) / sg[i]
    x = x + h_c[i] * (w_c[i, 0] * d + w_c[i, 1] * d1 + w_c[i, 2] * d2 + w_c[i, 3] * d3)
    return x, d, d1, d2

  x0 = latents * sg[0]
  z = jnp.zeros_like(x0)
  return jax.lax.fori_loop(0, N, body, (x0, z, z, z))[0]


def _unipc_coefficients(sig):
  """Per-step coefficients of UniPC-2 (bh2) on a grid ending at σ_N = 0, in float64.

  Predictor i → i+1 (order 2 from i = 1 on, order 1 on the first and the last step):
    x_{i+1} = a_i·x^c_i + p0_i·D_i + p1_i·D_{i−1}
  Corrector (UniC, same order + 1) once D_{i+1} = D(x_{i+1}) is known:
    x^c_{i+1} = a_i·x^c_i + q0_i·D_i + q1_i·D_{i−1} + q2_i·D_{i+1}
  with λ = −ln σ, h = λ_{i+1} − λ_i, φ = expm1(−h) = B(h), r = (λ_{i−1} − λ_i)/h, and the
  corrector weights ρ solving [[1, 1], [r, 1]]·ρ = [b_1, b_2] (b_k from the φ_k recursion).
  """
  N = len(sig) - 1
  a, p0, p1, q0, q1, q2 = (np.zeros(N) for _ in range(6))
  lam = -np.log(sig[:-1])
  for i in range(N):
    a[i] = sig[i + 1] / sig[i]
    if sig[i + 1] == 0:  # last step: x = D_i, no corrector
      p0[i] = 1.0
      continue
    h = lam[i + 1] - lam[i]  # σ_{i+1} > 0 here, so λ_{i+1} is finite
    hh = -h
    phi1 = np.expm1(hh)
    B = phi1
    order = 1 if i == 0 else 2
    # x_t_ = a·x − φ1·D_i
    p0[i] = q0[i] = -phi1
    if order == 1:
      rho_c = [0.5]  # corrector: − B·0.5·(D_{i+1} − D_i)
      q0[i] += B * rho_c[0]
      q2[i] = -B * rho_c[0]
      continue
    r = (lam[i - 1] - lam[i]) / h
    # predictor: − B·0.5·(D_{i−1} − D_i)/r
    p0[i] += B * 0.5 / r
    p1[i] = -B * 0.5 / r
    hp1 = phi1 / hh - 1
    hp2 = hp1 / hh - 0.5
    b = np.array([hp1 / B, hp2 * 2 / B])
    rho = np.linalg.solve(np.array([[1.0, 1.0], [r, 1.0]]), b)
    # corrector: − B·(ρ0·(D_{i−1} − D_i)/r + ρ1·(D_{i+1} − D_i))
    q0[i] += B * (rho[0] / r + rho[1])
    q1[i] = -B * rho[0] / r
    q2[i] = -B * rho[1]
  return a, p0, p1, q0, q1, q2


def _unipc(denoise, latents, sig):
  """UniPC-2 with the UniC corrector; see `_unipc_coefficients`. NFE = N."""
  dtype = latents.dtype
  N = len(sig) - 1
  a, p0, p1, q0, q1, q2 = (_const(v, dtype) for v in _unipc_coefficients(sig))
  sg = _const(sig[:-1], dtype)
  den = _denoiser(denoise, latents)

  def body(i, carry):
    # x_c: corrected x_{i−1}; x: predicted x_i; D1 = D_{i−1}, D2 = D_{i−2}.
    x_c, x, D1, D2 = carry
    D = den(x, sg[i])
    j = jnp.maximum(i - 1, 0)  # the step that produced x_i; nothing to correct at i = 0
    corrected = a[j] * x_c + q0[j] * D1 + q1[j] * D2 + q2[j] * D
    x_c = jnp.where(i == 0, x, corrected)
    x_next = a[i] * x_c + p0[i] * D + p1[i] * D1
    return x_c, x_next, D, D1

  x0 = latents * sg[0]
  z = jnp.zeros_like(x0)
  return jax.lax.fori_loop(0, N, body, (x0, x0, z, z))[1]


def _dpmpp_sde_coefficients(sig, order, eta):
  """Per-step x_{i+1} = a_i·x_i + b0_i·D_i + b1_i·D_{i−1} + b2_i·D_{i−2} + c_i·ε_i (float64).

  k-diffusion's DPM-Solver++(2M) SDE ("midpoint") and (3M) SDE with λ = −ln σ, h = λ_{i+1} − λ_i:
  x ← e^{−(1+η)h}·x + (1 − e^{−(1+η)h})·D, plus (2M) ½(1 − e^{−(1+η)h})/r·(D − D_{i−1}),
  r = h_{i−1}/h, or (3M) φ_2·d_1 − φ_3·d_2 from the divided differences of D, D_{i−1}, D_{i−2}
  (only φ_2·(D − D_{i−1})/r on the second step), φ_2 = expm1(−h_η)/h_η + 1, φ_3 = φ_2/h_η − ½;
  noise σ_{i+1}·√(1 − e^{−2ηh}). The step to σ = 0 is x = D.
  """
  N = len(sig) - 1
  a, b0, b1, b2, c = (np.zeros(N) for _ in range(5))
  h_prev = []
  for i in range(N):
    if sig[i + 1] == 0:
      b0[i] = 1.0
      continue
    h = np.log(sig[i]) - np.log(sig[i + 1])
    h_eta = h * (eta + 1)
    a[i] = np.exp(-h_eta)
    B = -np.expm1(-h_eta)
    b0[i] = B
    c[i] = sig[i + 1] * np.sqrt(-np.expm1(-2 * eta * h))
    if order == 2 and h_prev:
      w = 0.5 * B / (h_prev[-1] / h)
      b0[i] += w
      b1[i] -= w
    elif order == 3 and h_prev:
      phi2 = np.expm1(-h_eta) / h_eta + 1
      r0 = h_prev[-1] / h
      if len(h_prev) == 1:
        b0[i] += phi2 / r0
        b1[i] -= phi2 / r0
      else:
        phi3 = phi2 / h_eta - 0.5
        r1 = h_prev[-2] / h
        # φ2·d1 − φ3·d2 = α·d1_0 + β·d1_1, d1_0 = (D − D1)/r0, d1_1 = (D1 − D2)/r1
        alpha = phi2 * (1 + r0 / (r0 + r1)) - phi3 / (r0 + r1)
        beta = -phi2 * r0 / (r0 + r1) + phi3 / (r0 + r1)
        b0[i] += alpha / r0
        b1[i] += -alpha / r0 + beta / r1
        b2[i] -= beta / r1
    h_prev.append(h)
  return a, b0, b1, b2, c


def _dpmpp_sde(denoise, latents, sig, order, eta, s_noise, key, solver):
  """DPM-Solver++(2M/3M) SDE (η > 0) or ODE (η = 0); see `_dpmpp_sde_coefficients`. NFE = N."""
  dtype = latents.dtype
  N = len(sig) - 1
  a, b0, b1, b2, c = _dpmpp_sde_coefficients(sig, order, eta)
  c = c * s_noise
  stochastic = bool(np.any(c > 0))
  keys = None
  if stochastic:
    if key is None:
      raise JaxdiffError(f"solver {solver!r} draws noise (eta > 0) and needs key=; pass a PRNG key")
    keys = sample_keys(key, latents.shape[0])
  a, b0, b1, b2, c, sg = (_const(v, dtype) for v in (a, b0, b1, b2, c, sig[:-1]))
  den = _denoiser(denoise, latents)

  def body(i, carry):
    x, D1, D2 = carry
    D = den(x, sg[i])
    x = a[i] * x + b0[i] * D + b1[i] * D1 + b2[i] * D2
    if stochastic:
      x = x + c[i] * _step_noise(keys, i, x.shape[1:], dtype)
    return x, D, D1

  x0 = latents * sg[0]
  z = jnp.zeros_like(x0)
  return jax.lax.fori_loop(0, N, body, (x0, z, z))[0]


def _consistency(denoise, latents, sig, eps, s_noise, key):
  """Song et al. 2023, Algorithm 1: x = f(σ_0·z, σ_0); x ← f(x + √(τ_n² − ε²)·s_noise·ε_n, τ_n)."""
  dtype = latents.dtype
  tau = sig[:-1]
  if np.any(tau[1:] <= eps):
    raise JaxdiffError(f"consistency sampling needs every later noise level > sigma_min = {eps}, "
                       f"got {np.array2string(tau, precision=4)}")
  K = len(tau)
  if K > 1 and key is None:
    raise JaxdiffError("solver 'consistency' with num_steps > 1 draws noise and needs key=; pass a "
                       "PRNG key")
  keys = sample_keys(key, latents.shape[0]) if K > 1 else None
  noise_c = _const(np.sqrt(np.clip(tau**2 - eps**2, 0, None)) * s_noise, dtype)
  sg = _const(tau, dtype)
  f = _denoiser(denoise, latents)

  def body(n, x):
    x = x + noise_c[n] * _step_noise(keys, n, x.shape[1:], dtype)
    return f(x, sg[n])

  x = f(latents * sg[0], sg[0])
  return jax.lax.fori_loop(1, K, body, x) if K > 1 else x
