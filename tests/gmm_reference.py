"""Independent NumPy float64 references for the sampler tests.

Written straight from the papers' formulas (EDM Algorithm 2 and its ablation sampler, DPM-Solver++
(2M), iPNDM, Euler ancestral) with plain Python loops and explicit matrix inverses, sharing no code
with jaxdiff, so agreement is evidence that both are right.
"""

import numpy as np


def gmm_denoise(weights, means, covs, x, sigma):
  """E[y | x] of the mixture via explicit inverses: x [B, d], sigma [B] or scalar."""
  weights = np.asarray(weights, np.float64) / np.sum(weights)
  x = np.asarray(x, np.float64)
  sigma = np.broadcast_to(np.asarray(sigma, np.float64), (x.shape[0],))
  d = x.shape[1]
  out = np.zeros_like(x)
  for b in range(x.shape[0]):
    logp, post = [], []
    for w, mu, S in zip(weights, means, covs):
      C = S + sigma[b] ** 2 * np.eye(d)
      Ci = np.linalg.inv(C)
      r = x[b] - mu
      _, logdet = np.linalg.slogdet(C)
      logp.append(np.log(w) - 0.5 * (r @ Ci @ r) - 0.5 * logdet)
      post.append(mu + S @ Ci @ r)
    logp = np.array(logp)
    p = np.exp(logp - logp.max())
    p /= p.sum()
    out[b] = np.sum(p[:, None] * np.array(post), axis=0)
  return out


def edm_grid(N, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  i = np.arange(N, dtype=np.float64)
  frac = i / (N - 1) if N > 1 else np.zeros(1)
  t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  return np.append(t, 0.0)


def algorithm2(D, latents, N, heun=True, sigma_min=0.002, sigma_max=80.0, rho=7.0, S_churn=0.0,
               S_min=0.0, S_max=np.inf, S_noise=1.0, noise=None):
  """EDM Algorithm 2. noise[i] (same shape as x) is the ε used at step i."""
  t = edm_grid(N, sigma_min, sigma_max, rho)
  x = np.asarray(latents, np.float64) * t[0]
  for i in range(N):
    gamma = min(S_churn / N, np.sqrt(2) - 1) if S_min <= t[i] <= S_max else 0.0
    t_hat = t[i] + gamma * t[i]
    x_hat = x
    if gamma > 0:
      x_hat = x + np.sqrt(t_hat**2 - t[i] ** 2) * S_noise * noise[i]
    d = (x_hat - D(x_hat, t_hat)) / t_hat
    x = x_hat + (t[i + 1] - t_hat) * d
    if heun and t[i + 1] != 0:
      d2 = (x - D(x, t[i + 1])) / t[i + 1]
      x = x_hat + (t[i + 1] - t_hat) * (0.5 * d + 0.5 * d2)
  return x


def ablation(D, latents, N, solver, discretization, schedule, scaling, sigma_min, sigma_max,
             epsilon_s=1e-3, alpha=1.0, rho=7.0):
  """The EDM paper's generalised deterministic sampler (Algorithm 1 with σ(t), s(t))."""
  vp_beta_d = 2 * (np.log(sigma_min**2 + 1) / epsilon_s - np.log(sigma_max**2 + 1)) / (epsilon_s - 1)
  vp_beta_min = np.log(sigma_max**2 + 1) - 0.5 * vp_beta_d

  def vp_sig(t):
    return np.sqrt(np.exp(0.5 * vp_beta_d * t**2 + vp_beta_min * t) - 1)

  i = np.arange(N, dtype=np.float64)
  if discretization == "vp":
    sig_steps = vp_sig(1 + i / (N - 1) * (epsilon_s - 1))
  elif discretization == "ve":
    sig_steps = np.sqrt(sigma_max**2 * (sigma_min**2 / sigma_max**2) ** (i / (N - 1)))
  else:
    sig_steps = edm_grid(N, sigma_min, sigma_max, rho)[:-1]

  if schedule == "vp":
    sig = vp_sig
    dsig = lambda t: 0.5 * (vp_beta_min + vp_beta_d * t) * (vp_sig(t) + 1 / vp_sig(t))
    # Invert σ(t) by bisection (independent of the closed form used by jaxdiff).
    def inv(s):
      lo, hi = 0.0, 1.5
      for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if vp_sig(mid) < s else (lo, mid)
      return 0.5 * (lo + hi)
  elif schedule == "ve":
    sig, dsig, inv = np.sqrt, lambda t: 0.5 / np.sqrt(t), lambda s: s**2
  else:
    sig, dsig, inv = (lambda t: t), (lambda t: 1.0), (lambda s: s)
  if scaling == "vp":
    s = lambda t: 1 / np.sqrt(1 + sig(t) ** 2)
    ds = lambda t: -sig(t) * dsig(t) * s(t) ** 3
  else:
    s, ds = (lambda t: 1.0), (lambda t: 0.0)

  t = np.array([inv(v) for v in sig_steps] + [0.0])

  def f(x, tt):
    return (dsig(tt) / sig(tt) + ds(tt) / s(tt)) * x - dsig(tt) * s(tt) / sig(tt) * D(x / s(tt), sig(tt))

  x = np.asarray(latents, np.float64) * sig(t[0]) * s(t[0])
  for k in range(N):
    h = t[k + 1] - t[k]
    d = f(x, t[k])
    if solver == "euler" or k == N - 1:
      x = x + h * d
    else:
      xp = x + alpha * h * d
      dp = f(xp, t[k] + alpha * h)
      x = x + h * ((1 - 1 / (2 * alpha)) * d + 1 / (2 * alpha) * dp)
  return x


def dpmpp_2m(D, latents, sigmas):
  """DPM-Solver++(2M) in λ = −ln σ (Lu et al. 2022, Algorithm 2), first order at the ends."""
  x = np.asarray(latents, np.float64) * sigmas[0]
  old = None
  for i in range(len(sigmas) - 1):
    den = D(x, sigmas[i])
    if sigmas[i + 1] == 0:
      x = den
      break
    lam, lam_next = -np.log(sigmas[i]), -np.log(sigmas[i + 1])
    h = lam_next - lam
    if old is None:
      x = sigmas[i + 1] / sigmas[i] * x - np.expm1(-h) * den
    else:
      r = (lam - (-np.log(sigmas[i - 1]))) / h
      dd = (1 + 1 / (2 * r)) * den - 1 / (2 * r) * old
      x = sigmas[i + 1] / sigmas[i] * x - np.expm1(-h) * dd
    old = den
  return x


def ipndm(D, latents, sigmas):
  x = np.asarray(latents, np.float64) * sigmas[0]
  hist = []
  for i in range(len(sigmas) - 1):
    d = (x - D(x, sigmas[i])) / sigmas[i]
    hist.insert(0, d)
    h = sigmas[i + 1] - sigmas[i]
    n = min(len(hist), 4)
    if n == 1:
      x = x + h * hist[0]
    elif n == 2:
      x = x + h * (3 * hist[0] - hist[1]) / 2
    elif n == 3:
      x = x + h * (23 * hist[0] - 16 * hist[1] + 5 * hist[2]) / 12
    else:
      x = x + h * (55 * hist[0] - 59 * hist[1] + 37 * hist[2] - 9 * hist[3]) / 24
  return x


def euler_ancestral(D, latents, sigmas, noise):
  x = np.asarray(latents, np.float64) * sigmas[0]
  for i in range(len(sigmas) - 1):
    s, sn = sigmas[i], sigmas[i + 1]
    up = min(sn, np.sqrt(sn**2 * (s**2 - sn**2) / s**2))
    down = np.sqrt(sn**2 - up**2)
    x = x + (x - D(x, s)) / s * (down - s)
    if up > 0:
      x = x + noise[i] * up
  return x


def unipc(D, latents, sigmas, order=2):
  """UniPC (Zhao et al. 2023), multistep, data prediction, B(h) = e^{−h} − 1 ("bh2"), written as
  in the paper's Algorithm: predictor UniP-p, then (except on the last step) corrector UniC with
  the model output at the new point; order 1 on the first step and on the step to σ = 0."""
  lam = lambda s: -np.log(s)
  x = np.asarray(latents, np.float64) * sigmas[0]
  Ds, ls = [D(x, sigmas[0])], [lam(sigmas[0])]
  for i in range(len(sigmas) - 1):
    s, t = sigmas[i], sigmas[i + 1]
    if t == 0:
      return Ds[-1]
    p = min(order, len(Ds))
    h = lam(t) - ls[-1]
    hh = -h
    phi1 = np.expm1(hh)
    B = np.expm1(hh)
    rks, D1s = [], []
    for k in range(1, p):
      rk = (ls[-1 - k] - ls[-1]) / h
      rks.append(rk)
      D1s.append((Ds[-1 - k] - Ds[-1]) / rk)
    rks.append(1.0)
    rks = np.array(rks)
    R, b, hphik, fact = [], [], phi1 / hh - 1, 1
    for k in range(1, p + 1):
      R.append(rks ** (k - 1))
      b.append(hphik * fact / B)
      fact *= k + 1
      hphik = hphik / hh - 1 / fact
    R, b = np.array(R), np.array(b)
    x_t_ = t / s * x - phi1 * Ds[-1]
    x_pred = x_t_
    if p == 2:
      x_pred = x_t_ - B * 0.5 * D1s[0]
    D_new = D(x_pred, t)
    rho_c = np.array([0.5]) if p == 1 else np.linalg.solve(R, b)
    corr = sum(rc * d1 for rc, d1 in zip(rho_c[:-1], D1s)) + rho_c[-1] * (D_new - Ds[-1])
    x = x_t_ - B * corr
    Ds.append(D_new)
    ls.append(lam(t))
  return x


def dpmpp_2m_sde(D, latents, sigmas, eta=1.0, s_noise=1.0, noise=None):
  """DPM-Solver++(2M) SDE, midpoint form, written in k-diffusion's loop order; noise[i] at step i."""
  x = np.asarray(latents, np.float64) * sigmas[0]
  old, h_last = None, None
  for i in range(len(sigmas) - 1):
    den = D(x, sigmas[i])
    if sigmas[i + 1] == 0:
      x = den
    else:
      h = np.log(sigmas[i]) - np.log(sigmas[i + 1])
      eh = eta * h
      x = sigmas[i + 1] / sigmas[i] * np.exp(-eh) * x + (1 - np.exp(-h - eh)) * den
      if old is not None:
        r = h_last / h
        x = x + 0.5 * (1 - np.exp(-h - eh)) / r * (den - old)
      if eta:
        x = x + noise[i] * sigmas[i + 1] * np.sqrt(1 - np.exp(-2 * eh)) * s_noise
      h_last = h
    old = den
  return x


def dpmpp_3m_sde(D, latents, sigmas, eta=1.0, s_noise=1.0, noise=None):
  """DPM-Solver++(3M) SDE (eta = 0: the ODE solver DPM-Solver++(3M)) with divided differences."""
  x = np.asarray(latents, np.float64) * sigmas[0]
  d_1 = d_2 = h_1 = h_2 = None
  for i in range(len(sigmas) - 1):
    den = D(x, sigmas[i])
    if sigmas[i + 1] == 0:
      x = den
    else:
      h = -np.log(sigmas[i + 1]) + np.log(sigmas[i])
      he = h * (eta + 1)
      x = np.exp(-he) * x + (1 - np.exp(-he)) * den
      phi2 = (np.exp(-he) - 1) / he + 1
      if h_2 is not None:
        r0, r1 = h_1 / h, h_2 / h
        g0 = (den - d_1) / r0
        g1 = (d_1 - d_2) / r1
        first = g0 + (g0 - g1) * r0 / (r0 + r1)
        second = (g0 - g1) / (r0 + r1)
        x = x + phi2 * first - (phi2 / he - 0.5) * second
      elif h_1 is not None:
        x = x + phi2 * (den - d_1) / (h_1 / h)
      if eta:
        x = x + noise[i] * sigmas[i + 1] * np.sqrt(1 - np.exp(-2 * h * eta)) * s_noise
      h_1, h_2 = h, h_1
    d_1, d_2 = den, d_1
  return x


def consistency_sample(f, latents, taus, eps, noise):
  """Song et al. 2023, Algorithm 1 (multistep consistency sampling); noise[n] at step n >= 1."""
  x = f(np.asarray(latents, np.float64) * taus[0], taus[0])
  for n in range(1, len(taus)):
    x = f(x + np.sqrt(taus[n] ** 2 - eps**2) * noise[n], taus[n])
  return x
