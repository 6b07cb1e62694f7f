"""Preconditioning coefficients vs the formulas of EDM Table 1, computed independently in NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import precond as P
from jaxdiff.errors import JaxdiffError

SIGMAS = np.array([0.002, 0.02, 0.3, 1.0, 2.5, 14.0, 80.0])


def _vp_t_of_sigma_bisect(sigma, beta_d=19.9, beta_min=0.1):
  """t with √(exp(½β_d t² + β_min t) − 1) = σ, by bisection (not the closed form)."""
  lo, hi = 0.0, 2.0
  for _ in range(100):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if np.sqrt(np.exp(0.5 * beta_d * mid**2 + beta_min * mid) - 1) < sigma else (lo, mid)
  return 0.5 * (lo + hi)


def _iddpm_table_closed_form(M=1000, C_2=0.008, C_1=0.001):
  """Telescoping the recurrence (no clipping for j ≥ 2): 1 + u_j² = ᾱ(M)/ᾱ(j); u_0 is clipped."""
  ab = lambda j: np.sin(0.5 * np.pi * j / M / (C_2 + 1)) ** 2
  u = np.zeros(M + 1)
  j = np.arange(1, M + 1)
  u[1:] = np.sqrt(ab(M) / ab(j) - 1)
  u[0] = np.sqrt((u[1] ** 2 + 1) / C_1 - 1)
  return u


def expected(name, s):
  if name == "edm":
    sd = 0.5
    return sd**2 / (s**2 + sd**2), s * sd / np.sqrt(s**2 + sd**2), 1 / np.sqrt(s**2 + sd**2), np.log(s) / 4
  if name == "vp":
    return np.ones_like(s), -s, 1 / np.sqrt(s**2 + 1), 999 * np.array([_vp_t_of_sigma_bisect(v) for v in s])
  if name == "ve":
    return np.ones_like(s), s, np.ones_like(s), np.log(s / 2)
  u = _iddpm_table_closed_form()
  idx = np.array([np.argmin(np.abs(v - u)) for v in s])
  return np.ones_like(s), -s, 1 / np.sqrt(s**2 + 1), 999.0 - idx


@pytest.mark.parametrize("name", ["edm", "vp", "ve", "iddpm"])
def test_coefficients_match_formulas(name):
  pc = P.make_precond(name)
  got = pc.coefficients(jnp.asarray(SIGMAS, jnp.float32))
  for g, w in zip(got, expected(name, SIGMAS)):
    chex.assert_shape(g, SIGMAS.shape)
    chex.assert_type(g, jnp.float32)
    np.testing.assert_allclose(np.asarray(g), w, rtol=2e-6, atol=2e-5)


def test_coefficients_keep_shape_and_are_hashable():
  for name in P.PRECONDS:
    pc = P.make_precond(name)
    hash(pc)
    c = pc.coefficients(jnp.ones((3, 1, 1, 1)))
    for v in c:
      chex.assert_shape(v, (3, 1, 1, 1))


def test_iddpm_table_and_rounding():
  pc = P.IDDPMPrecond()
  u = pc.u
  np.testing.assert_allclose(u, _iddpm_table_closed_form(), rtol=1e-9)
  assert u[-1] == 0 and np.all(np.diff(u) < 0)
  assert pc.sigma_max == pytest.approx(u[0]) and pc.sigma_min == pytest.approx(u[999])
  # round_sigma returns the nearest table entry, on host (float64) and on device (float32).
  r_host = pc.round_sigma(np.array([1.0, 10.0]))
  for v, r in zip([1.0, 10.0], r_host):
    assert r == u[np.argmin(np.abs(u - v))]
  np.testing.assert_allclose(np.asarray(pc.round_sigma(jnp.array([1.0, 10.0]))), r_host, rtol=1e-6)
  assert pc.out_channels_factor == 2
  assert all(P.make_precond(n).out_channels_factor == 1 for n in ("edm", "vp", "ve"))


def test_vp_sigma_range():
  pc = P.VPPrecond()
  assert pc.sigma_max == pytest.approx(np.sqrt(np.exp(0.5 * 19.9 + 0.1) - 1))
  assert pc.sigma_min == pytest.approx(np.sqrt(np.exp(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5) - 1))


@pytest.mark.parametrize("name", ["edm", "vp", "ve", "iddpm"])
def test_denoise_combines_the_network_output(name):
  pc = P.make_precond(name)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
  sigma = np.array([0.01, 0.5, 3.0, 40.0], np.float32)
  C = 2 * pc.out_channels_factor
  Wm = rng.normal(size=(2, C)).astype(np.float32)
  seen = {}

  def net_fn(x_in, c_noise, class_labels=None):
    seen["c_noise"], seen["labels"] = c_noise, class_labels
    return jnp.tanh(x_in) @ Wm * (1 + 0.01 * c_noise[:, None, None, None])

  labels = jnp.eye(4)
  D = P.denoise(pc, net_fn, x, sigma, class_labels=labels)
  chex.assert_shape(D, x.shape)
  chex.assert_type(D, jnp.float32)
  chex.assert_shape(seen["c_noise"], (4,))
  assert seen["labels"] is labels
  c_skip, c_out, c_in, c_noise = (np.asarray(v, np.float64) for v in pc.coefficients(jnp.asarray(sigma)))
  b = (4, 1, 1, 1)
  F = np.tanh(c_in.reshape(b) * x) @ Wm * (1 + 0.01 * c_noise.reshape(b))
  want = c_skip.reshape(b) * x + c_out.reshape(b) * F[..., :2]
  np.testing.assert_allclose(np.asarray(D), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  # A bf16 network output still gives a float32 D.
  D16 = P.denoise(pc, lambda *a, **k: net_fn(*a, **k).astype(jnp.bfloat16), x, sigma)
  chex.assert_type(D16, jnp.float32)


def test_denoise_scalar_sigma_broadcasts_and_jits():
  pc = P.EDMPrecond()
  f = jax.jit(lambda x: P.denoise(pc, lambda xi, cn: xi * 0 + cn[:, None], x, 2.0))
  D = f(jnp.ones((3, 5)))
  chex.assert_shape(D, (3, 5))
  c_skip, c_out, _, c_noise = (float(v) for v in pc.coefficients(2.0))
  np.testing.assert_allclose(np.asarray(D), c_skip + c_out * c_noise, rtol=1e-6)


def test_make_precond_errors():
  with pytest.raises(JaxdiffError, match="unknown precond"):
    P.make_precond("ddim")
  with pytest.raises(JaxdiffError, match="no option"):
    P.make_precond("edm", sigma_date=0.5)
  assert P.make_precond("edm", sigma_data=1.0).sigma_data == 1.0


def test_iddpm_index_is_the_nearest_table_entry():
  pc = P.IDDPMPrecond()
  u = pc.u
  s = np.concatenate([np.exp(np.random.default_rng(0).uniform(-8, 11, 3000)), u[:40], u[-40:],
                      [0.0, 1e6], (u[1:300] + u[:299]) / 2]).astype(np.float32)
  got = np.asarray(pc._index(jnp.asarray(s)))
  want = np.argmin(np.abs(s[:, None] - u.astype(np.float32)[None]), axis=1)  # brute force
  np.testing.assert_array_equal(got, want)
  # A constant σ compiles fast (no [B, M] argmin for XLA to constant-fold).
  c = jax.jit(lambda: pc.coefficients(jnp.full((4096,), 1.0)))()[3]
  assert float(c[0]) == 999 - np.argmin(np.abs(np.float32(1.0) - u.astype(np.float32)))
