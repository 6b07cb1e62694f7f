"""EDM2 loss (Eq. 21), its denoiser with u(σ), the inverse-square-root lr schedule, force_finite."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import edm2_loss as L
from jaxdiff.precond import EDMPrecond, denoise


def test_weight_and_sigma_distribution():
  loss = L.EDM2Loss(P_mean=-0.8, P_std=1.6, sigma_data=0.5)
  s = np.array([0.002, 0.1, 1.0, 80.0])
  np.testing.assert_allclose(np.asarray(loss.weight(s)), (s**2 + 0.25) / (s * 0.5) ** 2, rtol=1e-6)
  sig = loss.sample_sigma(jax.random.key(0), (20000,))
  chex.assert_shape(sig, (20000,))
  chex.assert_type(sig, jnp.float32)
  ln = np.log(np.asarray(sig, np.float64))
  np.testing.assert_allclose([ln.mean(), ln.std()], [-0.8, 1.6], atol=0.04)


def test_loss_matches_float64_numpy_and_sums_over_pixels():
  loss = L.EDM2Loss(P_mean=-0.4, P_std=1.0, sigma_data=0.5)
  key = jax.random.key(7)
  y = jax.random.normal(jax.random.key(1), (3, 4, 4, 2)) * 0.5
  sigma = jnp.array([0.05, 1.3, 20.0])
  a = 0.9

  def denoise_fn(x, s):  # toy D and u(σ), computed again below in float64
    return a * x, 0.3 * jnp.log(s) - 0.2

  got = L.edm2_loss(loss, denoise_fn, key, y, sigma=sigma)
  chex.assert_shape(got, (3,))
  chex.assert_type(got, jnp.float32)
  # float64 NumPy, with the same noise draw (the key's second half, as the contract says)
  n = np.asarray(jax.random.normal(jax.random.split(key)[1], y.shape), np.float64)
  y64, s64 = np.asarray(y, np.float64), np.asarray(sigma, np.float64)
  x = y64 + s64[:, None, None, None] * n
  u = 0.3 * np.log(s64) - 0.2
  w = (s64**2 + 0.25) / (s64 * 0.5) ** 2
  per_pixel = (w / np.exp(u))[:, None, None, None] * (a * x - y64) ** 2 + u[:, None, None, None]
  np.testing.assert_allclose(np.asarray(got), per_pixel.sum(axis=(1, 2, 3)), rtol=2e-5)


def test_optimal_logvar_is_log_of_weighted_error():
  # d/du [w e^{-u} E + u N] = 0 at u = ln(w E / N): E = Σ (D − y)², N pixels.
  loss = L.EDM2Loss()
  key = jax.random.key(3)
  y = jax.random.normal(jax.random.key(4), (2, 3, 3, 1)) * 0.5
  sigma = jnp.array([0.3, 3.0])
  n = jax.random.normal(jax.random.split(key)[1], y.shape) * sigma[:, None, None, None]
  E = np.sum(np.asarray((0.8 * (y + n) - y), np.float64) ** 2, axis=(1, 2, 3))
  u_star = np.log(np.asarray(loss.weight(sigma), np.float64) * E / 9)
  grad = jax.grad(lambda u: jnp.sum(L.edm2_loss(
      loss, lambda x, s: (0.8 * x, u), key, y, sigma=sigma)))(jnp.asarray(u_star, jnp.float32))
  np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-3)


def test_denoise_and_logvar_is_edm_preconditioning():
  p = EDMPrecond(sigma_data=0.5)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  sigma = jnp.array([0.01, 10.0])
  net_F = lambda x_in, c_noise, **c: jnp.tanh(x_in) * c_noise[:, None, None, None]  # noqa: E731
  D, lv = L.denoise_and_logvar(p, lambda x_in, c, **k: (net_F(x_in, c), 2 * c), x, sigma)
  chex.assert_shape(lv, (2,))
  np.testing.assert_allclose(np.asarray(D), np.asarray(denoise(p, net_F, x, sigma)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(lv), 2 * np.log([0.01, 10.0]) / 4, rtol=1e-6)


def _ref_lr(cur_nimg, batch_size, ref_lr, ref_batches, rampup_images):
  # The reference's learning_rate_schedule, written as branches over Python floats.
  lr = float(ref_lr)
  if ref_batches > 0:
    ratio = cur_nimg / (ref_batches * batch_size)
    if ratio > 1:
      lr = lr / ratio ** 0.5
  if rampup_images > 0 and cur_nimg < rampup_images:
    lr = lr * cur_nimg / rampup_images
  return lr


def test_lr_schedule_matches_the_reference_formula():
  kw = dict(ref_lr=0.012, batch_size=2048, ref_batches=35000, rampup_images=10_000_000)
  sched = L.edm2_lr_schedule(kw["ref_lr"], kw["batch_size"], kw["ref_batches"], kw["rampup_images"])
  for step in [0, 1, 100, 4882, 4883, 35000, 35001, 100000, 524287]:
    got = float(sched(jnp.asarray(step)))
    want = _ref_lr(step * 2048, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
  assert float(sched(jnp.asarray(0))) == 0.0  # the reference's first step has lr 0
  for rb, ru in [(0, 20000), (800, 0), (0, 0)]:
    for t in [0, 6400, 51200, 102400]:
      np.testing.assert_allclose(L.edm2_lr(np.float64(t), ref_lr=0.01, batch_size=64,
                                           ref_batches=rb, rampup_images=ru),
                                 _ref_lr(t, 64, 0.01, rb, ru), rtol=1e-12)


def test_adam_and_force_finite():
  tx = L.edm2_adam(0.01, 64, 800, 20000)
  p = {"w": jnp.ones(3)}
  st = tx.init(p)
  upd, st = tx.update({"w": jnp.ones(3)}, st, p)
  np.testing.assert_array_equal(np.asarray(upd["w"]), 0.0)  # lr 0 at step 0
  upd, st = tx.update({"w": jnp.ones(3)}, st, p)
  np.testing.assert_allclose(np.asarray(upd["w"]), -0.01 * 64 / 20000, rtol=1e-3)
  g = L.sanitize_grads_edm2({"g": jnp.array([jnp.nan, jnp.inf, -jnp.inf, 2.0])})
  np.testing.assert_array_equal(np.asarray(g["g"]), [0, 0, 0, 2])
