"""Exact denoisers vs explicit NumPy float64 formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmm_reference as R
from jaxdiff import exact
from jaxdiff.errors import JaxdiffError


def _mixture(d, K, seed):
  rng = np.random.default_rng(seed)
  A = rng.normal(size=(K, d, d)) * 0.5
  covs = A @ A.transpose(0, 2, 1) + 0.05 * np.eye(d)
  return rng.uniform(0.2, 1.0, K), rng.normal(size=(K, d)) * 2, covs


@pytest.mark.parametrize("d,K", [(1, 2), (5, 3), (16, 4)])
def test_gmm_denoiser_matches_explicit_inverses(d, K):
  w, mu, covs = _mixture(d, K, d)
  g = exact.GaussianMixture.create(w, mu, covs)
  x = np.random.default_rng(1).normal(size=(7, d)) * 3
  sigma = np.array([0.01, 0.1, 0.5, 1.0, 3.0, 20.0, 80.0])
  got = jax.jit(g.denoise)(jnp.asarray(x, jnp.float32), jnp.asarray(sigma, jnp.float32))
  chex.assert_shape(got, (7, d))
  chex.assert_type(got, jnp.float32)
  want = R.gmm_denoise(w, mu, covs, x, sigma)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_gmm_denoiser_limits_and_image_shapes():
  w, mu, covs = _mixture(4, 3, 0)
  g = exact.GaussianMixture.create(w, mu, covs)
  x = np.random.default_rng(2).normal(size=(5, 2, 2, 1)).astype(np.float32)
  # σ → ∞: the prior mean; σ → 0: the identity. Shapes [B, H, W, C] are flattened and restored.
  big = g.denoise(jnp.asarray(x), 1e4)
  chex.assert_shape(big, x.shape)
  np.testing.assert_allclose(np.asarray(big).reshape(5, 4), np.tile((w / w.sum()) @ mu, (5, 1)), atol=1e-3)
  np.testing.assert_allclose(np.asarray(g.denoise(jnp.asarray(x), 1e-4)), x, atol=1e-4)


def test_gmm_samples_have_the_mixture_moments():
  w, mu, covs = _mixture(3, 2, 4)
  g = exact.GaussianMixture.create(w, mu, covs)
  y = np.asarray(g.sample(jax.random.key(0), 200_000), np.float64)
  p = w / w.sum()
  mean = p @ mu
  cov = sum(pk * (S + np.outer(m - mean, m - mean)) for pk, m, S in zip(p, mu, covs))
  np.testing.assert_allclose(y.mean(0), mean, atol=0.03)
  np.testing.assert_allclose(np.cov(y.T), cov, atol=0.06 * np.abs(cov).max())


def test_gmm_rejects_bad_shapes():
  with pytest.raises(JaxdiffError):
    exact.GaussianMixture.create([1.0], np.zeros((2, 3)), np.zeros((2, 3, 3)))
  with pytest.raises(JaxdiffError):
    exact.GaussianMixture.create([1.0, 1.0], np.zeros((2, 2)), -np.stack([np.eye(2)] * 2))


def _dataset_np(data, x, sigma):
  out = []
  for xb, sb in zip(x, sigma):
    logits = -np.sum((xb[None] - data) ** 2, axis=1) / (2 * sb**2)
    p = np.exp(logits - logits.max())
    out.append(p @ data / p.sum())
  return np.array(out)


@pytest.mark.parametrize("chunk", [1, 7, 64, 5000])
def test_dataset_denoiser_matches_numpy_for_any_chunk(chunk):
  rng = np.random.default_rng(0)
  data = rng.uniform(-1, 1, size=(300, 6))
  x = data[:9] + rng.normal(size=(9, 6)) * 0.5
  sigma = np.array([0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 10.0, 80.0])
  got = exact.dataset_denoise(jnp.asarray(data, jnp.float32), jnp.asarray(x, jnp.float32),
                              jnp.asarray(sigma, jnp.float32), chunk=chunk)
  chex.assert_shape(got, x.shape)
  np.testing.assert_allclose(np.asarray(got), _dataset_np(data, x, sigma), atol=2e-4)


def test_dataset_denoiser_is_stable_and_equals_a_point_mixture():
  rng = np.random.default_rng(1)
  data = rng.uniform(-1, 1, size=(50, 2, 2, 1)).astype(np.float32)
  # Tiny σ: logits of order 1e6 do not overflow; the answer is the nearest point.
  x = data[[3, 17]] + 1e-4
  got = exact.dataset_denoise(data, x, 1e-3, chunk=16)
  assert np.all(np.isfinite(np.asarray(got)))
  np.testing.assert_allclose(np.asarray(got), data[[3, 17]], atol=1e-5)
  # A mixture of equal-weight, zero-covariance Gaussians at the points is the same denoiser.
  flat = data.reshape(50, 4)
  g = exact.GaussianMixture.create(np.ones(50), flat, np.zeros((50, 4, 4)))
  q = rng.normal(size=(6, 4)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(exact.dataset_denoise(flat, q, 0.4, chunk=8)),
                             np.asarray(g.denoise(q, 0.4)), atol=1e-5)


def test_dataset_denoiser_thousands_of_points():
  data = jax.random.uniform(jax.random.key(0), (4000, 64), minval=-1, maxval=1)
  x = jax.random.normal(jax.random.key(1), (256, 64))
  got = jax.jit(lambda x: exact.dataset_denoise(data, x, 1.5, chunk=512))(x)
  chex.assert_shape(got, (256, 64))
  want = _dataset_np(np.asarray(data, np.float64)[:, :], np.asarray(x[:4], np.float64), [1.5] * 4)
  np.testing.assert_allclose(np.asarray(got[:4]), want, atol=1e-4)
