"""Power-function EMA (jaxdiff.phema): width <-> exponent, tracking, Algorithm 3, reconstruction."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import phema
from jaxdiff.errors import JaxdiffError


def test_std_exp_closed_forms():
  # Hand cases: γ = 0 is the flat average, σ_rel = √(1/12); the paper's γ for σ_rel 0.05 / 0.10.
  np.testing.assert_allclose(phema.exp_to_std(0.0), np.sqrt(1 / 12), rtol=1e-15)
  np.testing.assert_allclose(phema.std_to_exp([0.05, 0.10]), [16.97, 6.94], atol=0.01)
  stds = np.array([0.01, 0.05, 0.1, 0.2, 0.28])
  g = phema.std_to_exp(stds)
  assert g.shape == stds.shape and g.dtype == np.float64
  np.testing.assert_allclose(phema.exp_to_std(g), stds, rtol=1e-12)
  # γ solves the cubic of Eq. 126
  t = stds ** -2
  np.testing.assert_allclose(g**3 + 7 * g**2 + (16 - t) * g + 12 - t, 0, atol=1e-6 * t.max())


def test_beta_product_telescopes_to_the_profile():
  # ∏_{k=m+1..K} β_k = (m/K)^(γ+1): the weight still held by the EMA from the first m steps.
  std, batch, K, m = 0.07, 32, 200, 37
  gamma = phema.std_to_exp(std)
  betas = [phema.power_function_beta(std, k * batch, batch) for k in range(m + 1, K + 1)]
  np.testing.assert_allclose(np.prod(betas), (m / K) ** (gamma + 1), rtol=1e-12)
  assert phema.power_function_beta(std, batch, batch) == 0.0  # the first step copies the weights
  b = phema.power_function_beta(std, jnp.float32(5 * batch), batch)
  chex.assert_type(b, jnp.float32)
  np.testing.assert_allclose(float(b), (1 - 1 / 5) ** (gamma + 1), rtol=1e-5)


def _profile(tau, ofs, std):
  g = phema.std_to_exp(std)
  return np.where(tau <= ofs, (g + 1) * tau**g / ofs ** (g + 1), 0.0)


_GL = np.polynomial.legendre.leggauss(200)


def _inner(a_ofs, a_std, b_ofs, b_std):
  # Gauss-Legendre quadrature of ∫_0^min(t_a, t_b) p_a p_b dτ (both vanish beyond their end).
  x, w = _GL
  m = min(a_ofs, b_ofs)
  tau = 0.5 * m * (x + 1)
  return 0.5 * m * np.sum(w * _profile(tau, a_ofs, a_std) * _profile(tau, b_ofs, b_std))


def test_solve_coefficients_matches_numerical_algorithm3():
  in_ofs = np.repeat([2000.0, 4000.0, 6000.0, 8000.0], 2)
  in_std = np.tile([0.05, 0.10], 4)
  out_ofs = np.array([8000.0, 8000.0, 6000.0])
  out_std = np.array([0.07, 0.15, 0.08])
  X = phema.solve_coefficients(in_ofs, in_std, out_ofs, out_std)
  chex.assert_shape(X, (8, 3))
  assert X.dtype == np.float64
  # Independent: inner products by quadrature, then the least-squares normal equations.
  A = np.array([[_inner(a, sa, b, sb) for b, sb in zip(in_ofs, in_std)]
                for a, sa in zip(in_ofs, in_std)])
  B = np.array([[_inner(a, sa, b, sb) for b, sb in zip(out_ofs, out_std)]
                for a, sa in zip(in_ofs, in_std)])
  ref = np.linalg.lstsq(A, B, rcond=None)[0]
  ref = ref / ref.sum(axis=0)
  np.testing.assert_allclose(X, ref, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(X.sum(axis=0), 1.0, rtol=1e-12)
  # A tracked (time, std) pair is reproduced by its own snapshot alone.
  X1 = phema.solve_coefficients(in_ofs, in_std, 6000.0, 0.10)
  np.testing.assert_allclose(X1[:, 0], np.eye(8)[5], atol=1e-9)
  assert phema.reconstruction_error(in_ofs, in_std, 6000.0, 0.10, X1)[0] < 1e-6


def test_reconstructs_a_width_tracked_during_training():
  """Random-walk weights: the σ_rel 0.07 EMA tracked by phema_update is rebuilt from snapshots of
  0.05 and 0.10 every 100 steps to 1.1e-4 relative (measured; bar 1e-3), while the two tracked
  widths differ by ~12 % of the weights' norm."""
  steps, batch, every, dim = 1600, 64, 6400, 256
  stds = (0.05, 0.10, 0.07)
  per = every // batch

  @jax.jit
  def chunk(carry, incr, k0):  # `per` steps in one scan, ending on a snapshot time
    def body(c, xs):
      w, emas = c
      inc, k = xs
      w = w + inc
      return (w, phema.phema_update(emas, {"w": w}, stds, (k + 1) * batch, batch)), None
    return jax.lax.scan(body, carry, (incr, k0 + jnp.arange(per)))[0]

  incr = jax.random.normal(jax.random.key(0), (steps, dim), jnp.float32)
  carry = (jnp.zeros(dim), tuple({"w": jnp.zeros(dim)} for _ in stds))
  snaps, times, widths = [], [], []
  for k0 in range(0, steps, per):
    carry = chunk(carry, incr[k0:k0 + per], k0)
    t = (k0 + per) * batch
    assert phema.snapshot_due(t, every)
    for s, e in zip(stds[:2], carry[1][:2]):
      snaps.append(jax.tree.map(np.asarray, e))
      times.append(t)
      widths.append(s)
  emas = carry[1]
  assert len(snaps) == 2 * steps * batch // every
  (use, out) = phema.select_snapshots(list(zip(times, widths)))
  assert out == steps * batch and len(use) == len(snaps)
  X = phema.solve_coefficients(times, widths, out, 0.07)
  rec = phema.reconstruct(snaps, X)[0]["w"]
  tracked = np.asarray(emas[2]["w"])
  assert rec.dtype == np.float32 and rec.shape == (dim,)
  rel = np.linalg.norm(rec - tracked) / np.linalg.norm(tracked)
  spread = np.linalg.norm(np.asarray(emas[0]["w"] - emas[1]["w"])) / np.linalg.norm(tracked)
  assert rel < 1e-3, rel
  assert spread > 50 * rel


def test_reconstruct_is_the_weighted_sum():
  snaps = [{"a": np.full((2,), float(i), np.float32), "b": {"c": np.float32(i)}} for i in (1, 2, 3)]
  X = np.array([[1.0, 0.5], [0.0, 0.25], [0.0, 0.25]])
  out = phema.reconstruct(snaps, X)
  np.testing.assert_array_equal(out[0]["a"], [1, 1])
  np.testing.assert_allclose(out[1]["b"]["c"], 0.5 + 0.5 + 0.75)
  with pytest.raises(ValueError):
    phema.reconstruct(snaps, X[:2])


def test_snapshot_bookkeeping():
  assert phema.parse_snapshot_name(phema.snapshot_name(8388608, 0.05)) == (8388608, 0.05)
  assert phema.parse_snapshot_name("checkpoint-12") is None
  assert phema.snapshot_times(640, 128, 64) == [128, 256, 384, 512, 640]
  assert phema.snapshot_due(256, 128) and not phema.snapshot_due(192, 128)
  assert not phema.snapshot_due(128, 0)
  with pytest.raises(JaxdiffError, match="multiple of the batch"):
    phema.snapshot_times(640, 100, 64)


def test_errors():
  ofs, std = [1000, 2000, 2000], [0.05, 0.05, 0.10]
  for bad in (0.0, 0.3, -0.1):
    with pytest.raises(JaxdiffError, match="outside"):
      phema.solve_coefficients(ofs, std, 2000, bad)
  # Far narrower than any snapshot: the least squares fit is poor, refused with max_error.
  X = phema.solve_coefficients(ofs, std, 2000, 0.01)
  assert phema.reconstruction_error(ofs, std, 2000, 0.01, X)[0] > 0.05
  with pytest.raises(JaxdiffError, match="cannot be reconstructed"):
    phema.solve_coefficients(ofs, std, 2000, 0.01, max_error=0.05)
  with pytest.raises(JaxdiffError, match="linearly dependent"):
    phema.solve_coefficients([1000, 1000], [0.05, 0.05], 1000, 0.07)
  with pytest.raises(JaxdiffError, match="no power-function EMA snapshots"):
    phema.select_snapshots([])
  with pytest.raises(JaxdiffError, match="no snapshot at"):
    phema.select_snapshots([(1000, 0.05)], out_images=1500)
