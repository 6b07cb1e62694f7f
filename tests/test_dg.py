"""Discriminator guidance: the closed form on Gaussian mixtures, a finite-difference check of the
guidance gradient, per-sample independence, and every solver running the transform."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest


from jaxdiff import exact, sampling
from jaxdiff.dg import discriminator_guidance, guidance_gradient

SIGMAS = np.geomspace(0.002, 80.0, 25)


def _mixtures(dtype):
  """Model p and data q: 3- and 2-component mixtures in d = 4 (images [2, 2, 1])."""
  rng = np.random.default_rng(0)

  def make(k, shift):
    means = rng.uniform(-1, 1, (k, 4)) + shift
    a = rng.normal(size=(k, 4, 4)) * 0.3
    covs = a @ np.swapaxes(a, 1, 2) + 0.05 * np.eye(4)
    return exact.GaussianMixture.create(rng.uniform(0.5, 1.5, k), means, covs, dtype=dtype)
  return make(3, 0.0), make(2, 0.3)


def _np_log_density(gm, x, sigma):
  """Independent float64 log density: explicit covariances, slogdet and solve."""
  lw = np.asarray(gm.log_weights, np.float64)
  mu = np.asarray(gm.means, np.float64)
  U, lam = np.asarray(gm.eigvecs, np.float64), np.asarray(gm.eigvals, np.float64)
  covs = np.einsum("kij,kj,klj->kil", U, lam, U) + sigma**2 * np.eye(mu.shape[1])
  x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  out = []
  for xb in x:
    terms = []
    for k in range(len(lw)):
      r = xb - mu[k]
      _, logdet = np.linalg.slogdet(2 * np.pi * covs[k])
      terms.append(lw[k] - 0.5 * (r @ np.linalg.solve(covs[k], r) + logdet))
    m = max(terms)
    out.append(m + np.log(np.sum(np.exp(np.array(terms) - m))))
  return np.array(out)


def test_mixture_log_density_matches_numpy():
  with jax.enable_x64(True):
    p, _ = _mixtures(jnp.float64)
    x = np.random.default_rng(1).normal(size=(5, 2, 2, 1))
    for sigma in (0.002, 0.3, 80.0):
      got = p.log_density(jnp.asarray(x), sigma)
      chex.assert_shape(got, (5,))
      assert got.dtype == jnp.float64
      np.testing.assert_allclose(np.asarray(got), _np_log_density(p, x, sigma), rtol=1e-10)


def test_optimal_discriminator_turns_model_into_data_denoiser():
  """w = 1 with log_ratio = log q_σ − log p_σ: D_p + σ²∇ log(q_σ/p_σ) = D_q, for σ in [0.002, 80]."""
  with jax.enable_x64(True):
    p, q = _mixtures(jnp.float64)
    log_ratio = lambda x, s: q.log_density(x, s) - p.log_density(x, s)  # noqa: E731
    guided = jax.jit(discriminator_guidance(p.denoise, log_ratio, 1.0))
    key = jax.random.PRNGKey(0)
    worst = 0.0
    for i, sigma in enumerate(SIGMAS):
      k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
      # Points where either distribution has mass, at that noise level.
      y = jnp.concatenate([q.sample(k1, 32), p.sample(k2, 32)])
      x = (y + sigma * jax.random.normal(k3, y.shape, jnp.float64)).reshape(-1, 2, 2, 1)
      s = jnp.full((x.shape[0],), sigma, jnp.float64)
      got, want = guided(x, s), q.denoise(x, s)
      chex.assert_shape(got, x.shape)
      assert got.dtype == jnp.float64
      err = np.linalg.norm(np.asarray(got - want).reshape(64, -1), axis=1)
      rel = err / np.linalg.norm(np.asarray(want).reshape(64, -1), axis=1)
      worst = max(worst, rel.max())
      # The correction is not negligible: the model's denoiser differs from the data's by far
      # more than the guided one does (at small σ both are ≈ x, so compare with the error).
      gap = np.linalg.norm(np.asarray(p.denoise(x, s) - want).reshape(64, -1), axis=1)
      assert np.median(gap) > 100 * err.max(), (sigma, np.median(gap), err.max())
      if sigma > 0.1:
        assert np.median(gap / np.linalg.norm(np.asarray(want).reshape(64, -1), axis=1)) > 1e-2
    print('worst relative error', worst)
    assert worst <= 1e-4, worst


def _hand_discriminator(x, sigma):
  """A nonlinear logit with a σ dependence and cross-pixel terms: [B, 2, 2, 1] -> [B]."""
  f = x.reshape(x.shape[0], -1)
  a = jnp.array([0.7, -1.3, 0.4, 2.0], f.dtype)
  return jnp.tanh(f @ a / (1 + sigma)) + 0.3 * jnp.sum(f**2, axis=1) * jnp.sin(f[:, 0] * f[:, 3])


def test_guidance_gradient_matches_central_differences():
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 2, 2, 1)))
    sigma = jnp.asarray([0.01, 1.0, 20.0])
    g = guidance_gradient(_hand_discriminator, x, sigma)
    chex.assert_shape(g, x.shape)
    h = 1e-6
    fd = np.zeros(x.shape)
    xf = np.asarray(x)
    for idx in np.ndindex(*x.shape):
      e = np.zeros(x.shape)
      e[idx] = h
      plus = np.asarray(_hand_discriminator(jnp.asarray(xf + e), sigma))
      minus = np.asarray(_hand_discriminator(jnp.asarray(xf - e), sigma))
      fd[idx] = (plus[idx[0]] - minus[idx[0]]) / (2 * h)
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-7, atol=1e-9)
    # The transform adds exactly w·σ²·g to D (D = 0.5·x here, any denoiser would do).
    w = 2.5
    guided = discriminator_guidance(lambda y, s: 0.5 * y, _hand_discriminator, w)
    got = np.asarray(guided(x, sigma))
    want = 0.5 * xf + w * np.asarray(sigma)[:, None, None, None] ** 2 * fd
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_guidance_is_per_sample_and_windowed():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 2, 2, 1)), jnp.float32)
  sigma = jnp.asarray([0.1, 0.5, 2.0, 10.0], jnp.float32)
  g = guidance_gradient(_hand_discriminator, x, sigma)
  # Sample 0 alone gives the same gradient as inside the batch.
  g0 = guidance_gradient(_hand_discriminator, x[:1], sigma[:1])
  np.testing.assert_allclose(np.asarray(g[:1]), np.asarray(g0), rtol=1e-6)
  base = lambda y, s: jnp.zeros_like(y)  # noqa: E731
  windowed = discriminator_guidance(base, _hand_discriminator, 1.0, sigma_min=0.3, sigma_max=5.0)
  out = np.asarray(windowed(x, sigma))
  assert np.all(out[0] == 0) and np.all(out[3] == 0)  # outside [0.3, 5]: no guidance
  want = np.asarray(sigma)[1:3, None, None, None] ** 2 * np.asarray(g[1:3])
  np.testing.assert_allclose(out[1:3], want, rtol=1e-6)
  assert discriminator_guidance(base, _hand_discriminator, 0.0) is base


@pytest.mark.parametrize("solver", sampling.SOLVERS)
def test_every_solver_runs_guided_denoiser(solver):
  """With the optimal discriminator, sampling p with DG equals sampling q, for every solver."""
  with jax.enable_x64(True):
    p, q = _mixtures(jnp.float64)
    log_ratio = lambda x, s: q.log_density(x, s) - p.log_density(x, s)  # noqa: E731
    guided = discriminator_guidance(p.denoise, log_ratio, 1.0)
    latents = jax.random.normal(jax.random.PRNGKey(4), (8, 2, 2, 1), jnp.float64)
    key = jax.random.PRNGKey(5)
    run = lambda d: sampling.sample(d, latents, solver=solver, num_steps=8, key=key)  # noqa: E731
    got, want, plain = run(guided), run(q.denoise), run(p.denoise)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(np.asarray(plain - want))) > 1e-2  # the guidance changed the result
