"""σ grids (discretizations) and time schedules vs their formulas."""

import numpy as np
import pytest

from jaxdiff import schedules as S
from jaxdiff.errors import JaxdiffError
from jaxdiff.precond import IDDPMPrecond


def test_edm_grid():
  g = S.sigma_steps("edm", 18, 0.002, 80.0, 7.0)
  assert g.dtype == np.float64 and g.shape == (18,)
  assert g[0] == pytest.approx(80.0) and g[-1] == pytest.approx(0.002)
  # ρ-th roots are equally spaced.
  assert np.allclose(np.diff(g ** (1 / 7)), (0.002 ** (1 / 7) - 80 ** (1 / 7)) / 17)


def test_vp_grid_hits_its_endpoints_and_is_uniform_in_t():
  smin, smax, eps = 0.01, 150.0, 1e-3
  g = S.sigma_steps("vp", 10, smin, smax, epsilon_s=eps)
  assert g[0] == pytest.approx(smax) and g[-1] == pytest.approx(smin)
  beta_d, beta_min = S.vp_betas(smin, smax, eps)
  t = (np.sqrt(beta_min**2 + 2 * beta_d * np.log(1 + g**2)) - beta_min) / beta_d
  assert np.allclose(np.diff(t), (eps - 1) / 9)


def test_ve_grid_is_geometric():
  g = S.sigma_steps("ve", 9, 0.02, 100.0)
  assert g[0] == pytest.approx(100.0) and g[-1] == pytest.approx(0.02)
  assert np.allclose(g[1:] / g[:-1], (0.02 / 100) ** (1 / 8))


def test_iddpm_grid_picks_table_entries():
  u = IDDPMPrecond().u
  g = S.sigma_steps("iddpm", 6, 0.002, 81.0)
  inside = u[(u >= 0.002) & (u <= 81.0)]
  want = inside[[round(k * (len(inside) - 1) / 5) for k in range(6)]]
  np.testing.assert_array_equal(g, want)
  assert g[0] <= 81.0 and g[-1] >= 0.002 and np.all(np.isin(g, u))


def test_default_ranges():
  lo, hi = S.default_sigma_range("vp")
  assert hi == pytest.approx(np.sqrt(np.exp(0.5 * 19.9 + 0.1) - 1))
  assert lo == pytest.approx(np.sqrt(np.exp(0.5 * 19.9 * 1e-6 + 0.1 * 1e-3) - 1))
  assert S.default_sigma_range("iddpm") == (0.002, 81.0)


@pytest.mark.parametrize("name", ["linear", "ve", "vp"])
def test_schedule_derivative_and_inverse(name):
  sched = S.make_schedule(name, 0.002, 80.0)
  t = np.array([0.05, 0.2, 0.5, 0.9])
  h = 1e-6
  fd = (sched.sigma(t + h) - sched.sigma(t - h)) / (2 * h)
  np.testing.assert_allclose(sched.sigma_deriv(t), fd, rtol=1e-6)
  np.testing.assert_allclose(sched.sigma_inv(sched.sigma(t)), t, rtol=1e-9)
  for scal_name in ("none", "vp"):
    scal = S.make_scaling(scal_name)
    fd = (scal.s(t + h, sched) - scal.s(t - h, sched)) / (2 * h)
    np.testing.assert_allclose(scal.s_deriv(t, sched), fd, rtol=1e-5, atol=1e-9)


def test_unknown_names():
  with pytest.raises(JaxdiffError):
    S.sigma_steps("cosine", 4, 0.1, 1.0)
  with pytest.raises(JaxdiffError):
    S.make_schedule("exp", 0.1, 1.0)
  with pytest.raises(JaxdiffError):
    S.make_scaling("ve")
