"""Consistency models: boundary condition, iCT discretisation/curriculum/index law, CT and CD losses
against independent NumPy float64 computations."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import consistency, precond, sampling
from jaxdiff.consistency import ICT, ConsistencyPrecond
from jaxdiff.errors import JaxdiffError
from test_sampling import GMM, D_np

SD, SMIN = 0.5, 0.002
rng = np.random.default_rng(0)
W = rng.normal(size=(4, 4)) * 0.7
BIAS = rng.normal(size=4)
X = rng.normal(size=(6, 4)) * 0.5  # a fixed "data" batch, dim 4


def coef_np(sigma):
  sigma = np.asarray(sigma, np.float64)
  c_skip = SD**2 / ((sigma - SMIN) ** 2 + SD**2)
  c_out = SD * (sigma - SMIN) / np.sqrt(SD**2 + sigma**2)
  c_in = 1 / np.sqrt(sigma**2 + SD**2)
  return c_skip, c_out, c_in, np.log(sigma) / 4


def net_jax(u, c_noise, mask=None):
  out = jnp.tanh(u @ jnp.asarray(W, jnp.float32) + c_noise[:, None] * jnp.asarray(BIAS, jnp.float32))
  return out if mask is None else out * mask


def f_np(x, sigma, mask):
  c_skip, c_out, c_in, c_noise = (v[:, None] for v in coef_np(sigma))
  return c_skip * x + c_out * np.tanh((c_in * x) @ W + c_noise * BIAS) * mask


def test_coefficients_match_the_formulas():
  pc = ConsistencyPrecond()
  s = np.array([0.002, 0.0021, 0.05, 0.5, 3.0, 80.0])
  got = pc.coefficients(jnp.asarray(s, jnp.float32))
  for g, w in zip(got, coef_np(s)):
    chex.assert_type(g, jnp.float32)
    np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=1e-7)
  # Far from σ_min it approaches EDM's preconditioning.
  edm = precond.EDMPrecond().coefficients(jnp.float32(80.0))
  np.testing.assert_allclose(np.asarray(got[1][-1]), np.asarray(edm[1]), rtol=1e-4)


@pytest.mark.parametrize("sigma", [0.002, np.float32(0.002), "batch"])
def test_boundary_condition_is_exact_in_float32(sigma):
  pc = ConsistencyPrecond()
  x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 8, 8, 3)) * 3, jnp.float32)
  big = lambda u, cn: 1e3 * jnp.sin(u * 7.0) + cn[:, None, None, None]  # a large F: c_out must be 0
  s = jnp.full((5,), 0.002, jnp.float32) if sigma == "batch" else sigma
  out = jax.jit(lambda x: precond.denoise(pc, big, x, s))(x)
  chex.assert_type(out, jnp.float32)
  assert np.array_equal(np.asarray(out), np.asarray(x))  # bit for bit
  c_skip, c_out, _, _ = pc.coefficients(jnp.float32(0.002))
  assert float(c_skip) == 1.0 and float(c_out) == 0.0
  # ... and just above σ_min the network does contribute.
  out2 = precond.denoise(pc, big, x, 0.0025)
  assert float(jnp.max(jnp.abs(out2 - x))) > 1e-3


def test_curriculum_hand_values():
  ict = ICT()
  K = 400_000  # log2(1280/10) + 1 = 8 stages of K' = 50,000
  assert ict.stage_length(K) == 50_000
  want = {0: 11, 49_999: 11, 50_000: 21, 100_000: 41, 150_000: 81, 200_000: 161, 250_000: 321,
          300_000: 641, 349_999: 641, 350_000: 1281, 399_999: 1281, 10**7: 1281}
  for k, n in want.items():
    assert ict.num_scales(k, K) == n, k
  steps = jnp.asarray(list(want), jnp.int32)
  traced = jax.jit(lambda s: ict.num_scales(s, K))(steps)
  np.testing.assert_array_equal(np.asarray(traced), list(want.values()))
  # s1/s0 = 100: K' = ⌊700/(log2 100 + 1)⌋ = ⌊700/7.644⌋ = 91
  assert ICT(s0=10, s1=1000).stage_length(700) == 91


def test_karras_discretisation_and_weight():
  ict = ICT()
  s = ict.sigmas(11)
  a, b = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
  np.testing.assert_allclose(s, [(a + k / 10 * (b - a)) ** 7 for k in range(11)], rtol=1e-12)
  assert s[0] == pytest.approx(0.002) and s[-1] == pytest.approx(80.0)
  i = jnp.arange(10)
  np.testing.assert_allclose(np.asarray(ict.sigma(i, 11)), s[:10], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ict.weight(i, 11)), 1 / np.diff(s), rtol=1e-4)


@pytest.mark.parametrize("N", [11, 41, 1281])
def test_index_law_matches_the_erf_formula(N):
  ict = ICT()
  s = ict.sigmas(N)
  cdf = np.array([math.erf((math.log(v) + 1.1) / (math.sqrt(2) * 2.0)) for v in s])
  p = np.diff(cdf) / np.sum(np.diff(cdf))
  lp = np.asarray(ict.index_log_probs(N))
  chex.assert_shape(lp, (1280,))
  # float32 σ's and erfc: ~1e-4 relative on the narrowest intervals
  np.testing.assert_allclose(np.exp(lp[: N - 1]), p, rtol=1e-3, atol=1e-9)
  assert np.all(np.exp(lp[N - 1:]) == 0)
  traced = jax.jit(ict.index_log_probs)(jnp.int32(N))
  np.testing.assert_allclose(np.asarray(traced), lp, rtol=1e-4)


def test_index_sampling_frequencies():
  ict = ICT()
  N, n = 11, 200_000
  idx = np.asarray(jax.jit(lambda k: ict.sample_index(k, (n,), N))(jax.random.key(0)))
  assert idx.dtype == np.int32 and idx.min() >= 0 and idx.max() <= N - 2
  p = np.exp(np.asarray(ict.index_log_probs(N))[: N - 1])
  freq = np.bincount(idx, minlength=N - 1) / n
  np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-4)


def test_pseudo_huber():
  d = consistency.pseudo_huber(jnp.array([[3.0, 4.0], [1.0, 1.0]]), jnp.zeros((2, 2)), 1.0)
  np.testing.assert_allclose(np.asarray(d), [math.sqrt(26) - 1, math.sqrt(3) - 1], rtol=1e-6)
  assert consistency.huber_c(3 * 32 * 32) == pytest.approx(0.00054 * math.sqrt(3072))


def _f_jax(pc):
  def f(x, sigma, rng):
    mask = jax.random.bernoulli(rng, 0.7, x.shape).astype(jnp.float32) / 0.7
    return precond.denoise(pc, lambda u, cn: net_jax(u, cn, mask), x, sigma)
  return f


def ct_loss_np(x, z, i, N, mask, c):
  s = ICT().sigmas(N)
  hi, lo = s[i + 1], s[i]
  student = f_np(x + hi[:, None] * z, hi, mask)
  teacher = f_np(x + lo[:, None] * z, lo, mask)
  d = np.sqrt(np.sum((student - teacher) ** 2, -1) + c**2) - c
  return d / (hi - lo)


def test_ct_loss_matches_numpy_on_a_fixed_batch():
  ict = ICT()
  f = _f_jax(ConsistencyPrecond())
  N = 21
  z = np.random.default_rng(3).normal(size=X.shape)
  i = np.array([0, 3, 7, 12, 19, 5])
  drop = jax.random.key(4)
  got = jax.jit(lambda x, z, i: ict.ct_loss_given(f, x, z, i, N, drop))(X, z, i)
  chex.assert_shape(got, (6,))
  chex.assert_type(got, jnp.float32)
  mask = np.asarray(jax.random.bernoulli(drop, 0.7, X.shape), np.float64) / 0.7
  want = ct_loss_np(X, z, i, N, mask, 0.00054 * 2.0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4)
  # Both branches use the same dropout rng: with independent masks the loss would differ.
  other = np.asarray(jax.random.bernoulli(jax.random.key(5), 0.7, X.shape), np.float64) / 0.7
  s = ict.sigmas(N)
  mixed = (np.sqrt(np.sum((f_np(X + s[i + 1][:, None] * z, s[i + 1], mask)
                          - f_np(X + s[i][:, None] * z, s[i], other)) ** 2, -1) + 0.00108**2)
           - 0.00108) / (s[i + 1] - s[i])
  assert np.max(np.abs(mixed - want) / want) > 1e-2
  # The drawing wrapper: z = normal(split(key)[0]), i = sample_index(split(key)[1]).
  key = jax.random.key(6)
  kz, ki = jax.random.split(key)
  zz = jax.random.normal(kz, X.shape)
  ii = ict.sample_index(ki, (6,), N)
  np.testing.assert_allclose(np.asarray(ict.ct_loss(f, X, key, N, drop)),
                             np.asarray(ict.ct_loss_given(f, X, zz, ii, N, drop)), rtol=1e-6)


def test_ct_gradient_flows_through_the_student_only():
  ict = ICT()
  N = 11
  z = jnp.asarray(np.random.default_rng(7).normal(size=X.shape), jnp.float32)
  i = jnp.array([1, 2, 3, 4, 5, 6])
  pc = ConsistencyPrecond()

  def f_w(w):
    return lambda x, s, r: precond.denoise(pc, lambda u, cn: jnp.tanh(u @ w + cn[:, None]), x, s)

  w0 = jnp.asarray(W, jnp.float32)
  g = jax.grad(lambda w: jnp.mean(ict.ct_loss_given(f_w(w), X, z, i, N)))(w0)
  lo = ict.sigma(i, N)[:, None]
  teacher = f_w(w0)(X + lo * z, ict.sigma(i, N), None)  # a constant

  def student_only(w):
    hi = ict.sigma(i + 1, N)
    s = f_w(w)(X + hi[:, None] * z, hi, None)
    return jnp.mean(ict.weight(i, N) * consistency.pseudo_huber(s, teacher, 0.00108))

  np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(student_only)(w0)), rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(g).max()) > 0


def test_cd_target_is_one_heun_step_of_the_teacher():
  ict = ICT()
  N = 18
  x = np.random.default_rng(8).normal(size=(5, 2)) * 0.5
  z = np.random.default_rng(9).normal(size=(5, 2))
  i = np.array([0, 4, 9, 13, 16])
  got = jax.jit(lambda x, z, i: ict.cd_target(GMM.denoise, x, z, i, N))(x, z, i)
  chex.assert_shape(got, (5, 2))
  chex.assert_type(got, jnp.float32)
  s = ict.sigmas(N)
  want = np.zeros_like(x)
  for b in range(5):
    hi, lo = s[i[b] + 1], s[i[b]]
    xb = (x[b] + hi * z[b])[None]
    d = (xb - D_np(xb, hi)) / hi
    xe = xb + (lo - hi) * d
    d2 = (xe - D_np(xe, lo)) / lo
    want[b] = (xb + (lo - hi) * 0.5 * (d + d2))[0]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
  # The CD loss compares the student at σ_{i+1} with f at that target.
  f = _f_jax(ConsistencyPrecond())
  drop = jax.random.key(1)
  x4 = np.concatenate([x, x], 1)[:, :4]
  z4 = np.concatenate([z, z], 1)[:, :4]
  teacher4 = lambda y, s: jnp.concatenate([GMM.denoise(y[:, :2], s), GMM.denoise(y[:, 2:], s)], 1)
  loss = ict.cd_loss_given(f, teacher4, x4, z4, i, N, drop)
  mask = np.asarray(jax.random.bernoulli(drop, 0.7, x4.shape), np.float64) / 0.7
  hi, lo = s[i + 1], s[i]
  x_hat = np.concatenate([want, want], 1)
  student = f_np(x4 + hi[:, None] * z4, hi, mask)
  target = f_np(x_hat, lo, mask)
  c = 0.00054 * 2.0
  want_loss = (np.sqrt(np.sum((student - target) ** 2, -1) + c**2) - c) / (hi - lo)
  np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=2e-4)


def test_consistency_sampling_through_sample():
  pc = ConsistencyPrecond()
  f = lambda x, s: precond.denoise(pc, lambda u, cn: net_jax(u, cn), x, s)
  lat = jnp.asarray(np.random.default_rng(2).normal(size=(6, 4)), jnp.float32)
  one = jax.jit(lambda l: sampling.sample(f, l, "consistency", 1))(lat)
  sig = np.full(6, 80.0)
  np.testing.assert_allclose(np.asarray(one), f_np(np.asarray(lat, np.float64) * 80, sig, 1.0),
                             rtol=1e-5, atol=1e-5)


def test_bad_constants():
  with pytest.raises(JaxdiffError, match="sigma_min"):
    ICT(sigma_min=0.0)
  with pytest.raises(JaxdiffError, match="s0"):
    ICT(s0=20, s1=10)
