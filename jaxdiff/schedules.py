"""Noise-level grids (time-step discretizations) and the time schedules σ(t), s(t) of EDM's
"ablation sampler" (Karras et al. 2022, Table 1 and Section 3).

Grids are computed on the host in float64 from Python numbers (they are compile-time constants of
a sampler), so everything here is NumPy; the sampler casts to the latents' dtype.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxdiff.errors import JaxdiffError
from jaxdiff.precond import VP_BETA_D, VP_BETA_MIN, iddpm_sigma_table, vp_sigma, vp_sigma_inv

DISCRETIZATIONS = ("edm", "vp", "ve", "iddpm")
SCHEDULES = ("linear", "vp", "ve")
SCALINGS = ("none", "vp")

# The VP discretization/schedule re-derive β from the reference constants (precond.VP_BETA_*) so
# σ(ε_s) = σ_min and σ(1) = σ_max.


def default_sigma_range(discretization: str, epsilon_s: float = 1e-3) -> tuple[float, float]:
  """(σ_min, σ_max) the reference uses for each discretization."""
  if discretization == "vp":
    return (float(vp_sigma(epsilon_s)),
            float(vp_sigma(1.0)))
  return {"ve": (0.02, 100.0), "iddpm": (0.002, 81.0), "edm": (0.002, 80.0)}[discretization]


def vp_betas(sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3) -> tuple[float, float]:
  """(β_d, β_min) of the VP schedule with σ(ε_s) = σ_min and σ(1) = σ_max."""
  beta_d = 2 * (np.log(sigma_min**2 + 1) / epsilon_s - np.log(sigma_max**2 + 1)) / (epsilon_s - 1)
  beta_min = np.log(sigma_max**2 + 1) - 0.5 * beta_d
  return float(beta_d), float(beta_min)


def sigma_steps(discretization: str, num_steps: int, sigma_min: float, sigma_max: float,
                rho: float = 7.0, epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008,
                M: int = 1000) -> np.ndarray:
  """σ_0 > ... > σ_{N−1} (float64, without the final 0) of a time-step discretization.

  edm:   (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ
  vp:    σ_VP(1 + i/(N−1)·(ε_s − 1)) with β fitted to [σ_min, σ_max]
  ve:    √(σ_max²·(σ_min²/σ_max²)^{i/(N−1)})   (geometric)
  iddpm: every ((|u|−1)/(N−1))-th entry of the iDDPM σ table restricted to [σ_min, σ_max]
  With N = 1 the grid is [σ_max].
  """
  if discretization not in DISCRETIZATIONS:
    raise JaxdiffError(f"unknown discretization {discretization!r}; choose one of {DISCRETIZATIONS}")
  i = np.arange(num_steps, dtype=np.float64)
  frac = i / (num_steps - 1) if num_steps > 1 else np.zeros(1)
  if discretization == "edm":
    return (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  if discretization == "vp":
    beta_d, beta_min = vp_betas(sigma_min, sigma_max, epsilon_s)
    return vp_sigma(1 + frac * (epsilon_s - 1), beta_d, beta_min)
  if discretization == "ve":
    return np.sqrt(sigma_max**2 * (sigma_min**2 / sigma_max**2) ** frac)
  u = iddpm_sigma_table(C_1, C_2, M)
  u = u[(u >= sigma_min) & (u <= sigma_max)]
  if len(u) == 0:
    raise JaxdiffError(f"no iDDPM noise level lies in [{sigma_min}, {sigma_max}]; widen the range")
  return u[np.round((len(u) - 1) * frac).astype(np.int64)]


@dataclasses.dataclass(frozen=True)
class TimeSchedule:
  """σ(t), σ'(t), σ⁻¹ for schedule 'linear' (σ = t), 've' (σ = √t) or 'vp' (with β_d, β_min)."""
  name: str = "linear"
  beta_d: float = VP_BETA_D
  beta_min: float = VP_BETA_MIN

  def sigma(self, t):
    if self.name == "vp":
      return vp_sigma(t, self.beta_d, self.beta_min)
    return np.sqrt(t) if self.name == "ve" else t

  def sigma_deriv(self, t):
    if self.name == "vp":
      s = self.sigma(t)
      return 0.5 * (self.beta_min + self.beta_d * t) * (s + 1 / s)
    return 0.5 / np.sqrt(t) if self.name == "ve" else np.ones_like(t)

  def sigma_inv(self, sigma):
    if self.name == "vp":
      return vp_sigma_inv(sigma, self.beta_d, self.beta_min)
    return sigma**2 if self.name == "ve" else sigma


@dataclasses.dataclass(frozen=True)
class Scaling:
  """s(t) and s'(t): 'none' (s = 1) or 'vp' (s = 1/√(1 + σ(t)²))."""
  name: str = "none"

  def s(self, t, sched: TimeSchedule):
    if self.name == "vp":
      return 1 / np.sqrt(1 + sched.sigma(t) ** 2)
    return np.ones_like(t)

  def s_deriv(self, t, sched: TimeSchedule):
    if self.name == "vp":
      return -sched.sigma(t) * sched.sigma_deriv(t) * self.s(t, sched) ** 3
    return np.zeros_like(t)


def make_schedule(name: str, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3):
  if name not in SCHEDULES:
    raise JaxdiffError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
  if name == "vp":
    beta_d, beta_min = vp_betas(sigma_min, sigma_max, epsilon_s)
    return TimeSchedule("vp", beta_d, beta_min)
  return TimeSchedule(name)


def make_scaling(name: str):
  if name not in SCALINGS:
    raise JaxdiffError(f"unknown scaling {name!r}; choose one of {SCALINGS}")
  return Scaling(name)
