"""Training losses: σ distributions, weights, and the per-example loss vs NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import optimized_jit
from jaxdiff import losses as L
from jaxdiff.errors import JaxdiffError


def expected_weight(name, s):
  if name == "edm":
    return (s**2 + 0.25) / (s * 0.5) ** 2
  return 1 / s**2


@pytest.mark.parametrize("name", ["edm", "vp", "ve"])
def test_denoising_loss_matches_numpy(name):
  loss = L.make_loss(name)
  rng = np.random.default_rng(0)
  y = rng.uniform(-1, 1, size=(6, 4, 4, 3)).astype(np.float32)
  Wm = rng.normal(size=(3, 3)).astype(np.float32)
  seen = {}

  def denoise_fn(x, sigma, class_labels=None):
    seen.update(x=np.asarray(x, np.float64), sigma=np.asarray(sigma, np.float64), labels=class_labels)
    return jnp.tanh(x) @ Wm / (1 + sigma[:, None, None, None])

  labels = jnp.ones((6, 10))
  out = L.denoising_loss(loss, denoise_fn, jax.random.key(1), y, class_labels=labels)
  chex.assert_shape(out, (6,))
  chex.assert_type(out, jnp.float32)
  assert seen["labels"] is labels
  x, s = seen["x"], seen["sigma"]
  D = np.tanh(x) @ Wm / (1 + s[:, None, None, None])
  want = expected_weight(name, s) * np.mean((D - y) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5)
  # The noise added is n ~ N(0, σ²): standardised residuals are N(0, 1) (48 values per example).
  z = (x - y) / s[:, None, None, None]
  assert abs(z.mean()) < 0.2 and abs(z.std() - 1) < 0.15


def test_given_sigma_is_used():
  out = L.denoising_loss(L.EDMLoss(), lambda x, s: x * 0, jax.random.key(0), jnp.ones((3, 2)),
                         sigma=jnp.array([0.1, 1.0, 10.0]))
  s = np.array([0.1, 1.0, 10.0])
  np.testing.assert_allclose(np.asarray(out), (s**2 + 0.25) / (0.5 * s) ** 2, rtol=1e-6)


def test_sigma_distributions():
  key = jax.random.key(0)
  n = 200_000
  s = np.asarray(L.EDMLoss().sample_sigma(key, (n,)), np.float64)
  assert abs(np.log(s).mean() + 1.2) < 0.02 and abs(np.log(s).std() - 1.2) < 0.02
  s = np.asarray(L.VELoss().sample_sigma(key, (n,)), np.float64)
  u = (np.log(s) - np.log(0.02)) / (np.log(100) - np.log(0.02))
  assert u.min() >= 0 and u.max() <= 1 + 1e-6 and abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.003
  s = np.asarray(L.VPLoss().sample_sigma(key, (n,)), np.float64)
  # Invert σ(t) = √(exp(½β_d t² + β_min t) − 1) with the quadratic formula: t must be U(1e-5, 1).
  c = np.log1p(s**2)
  t = (-0.1 + np.sqrt(0.01 + 2 * 19.9 * c)) / 19.9
  assert t.min() > 1e-5 * 0.99 and t.max() < 1 + 1e-5 and abs(t.mean() - 0.5) < 0.01


@pytest.mark.parametrize("name", ["edm", "vp", "ve"])
def test_weights(name):
  s = np.array([0.002, 0.5, 80.0])
  w = L.make_loss(name).weight(jnp.asarray(s))
  chex.assert_type(w, jnp.float32)
  np.testing.assert_allclose(np.asarray(w), expected_weight(name, s), rtol=1e-6)


def test_make_loss_errors():
  with pytest.raises(JaxdiffError, match="unknown loss"):
    L.make_loss("iddpm")
  with pytest.raises(JaxdiffError, match="no option"):
    L.make_loss("edm", p_mean=0.0)
  hash(L.make_loss("vp"))


def test_restricted_lognormal_for_stages():
  loss = L.EDMLoss()
  bounds = [(None, 2.5103), (2.5103, 7.6577), (7.6577, None)]
  # Stage shares from the closed-form normal CDF (math.erf, independent of jax.scipy).
  import math
  Phi = lambda s: 0.5 * (1 + math.erf((math.log(s) + 1.2) / (1.2 * math.sqrt(2))))
  want = [Phi(2.5103), Phi(7.6577) - Phi(2.5103), 1 - Phi(7.6577)]
  got = [float(loss.probability(lo, hi)) for lo, hi in bounds]
  np.testing.assert_allclose(got, want, rtol=1e-4)
  np.testing.assert_allclose(got, [0.961, 0.035, 0.0035], rtol=0.05)  # REFERENCE.md's shares
  for lo, hi in bounds:
    s = np.asarray(loss.sample_sigma(jax.random.key(0), (50_000,), lo, hi), np.float64)
    assert s.min() >= (lo or 0) and s.max() < (hi or np.inf)
    # Conditional mean of ln σ on the interval matches the truncated normal's (by quadrature).
    z = np.linspace(-12, 12, 400_001)
    ls = z * 1.2 - 1.2
    mask = (ls >= np.log(lo or 1e-300)) & (ls < np.log(hi or 1e300))
    dens = np.exp(-0.5 * z**2) * mask
    assert abs(np.log(s).mean() - (ls * dens).sum() / dens.sum()) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("pname,lname", [("edm", "edm"), ("vp", "vp"), ("ve", "ve"), ("iddpm", "vp")])
def test_each_precond_loss_pair_learns_the_exact_denoiser(pname, lname):
  """A small MLP trained with each pair approaches the exact denoiser of a 2-D mixture."""
  import optax
  from jaxdiff import exact, precond as P
  g = exact.random_mixture(3, 2, 4, spread=1.0, scale=0.4)
  pc, ls = P.make_precond(pname), L.make_loss(lname)
  out = 2 * pc.out_channels_factor
  k = jax.random.split(jax.random.key(0), 3)
  params = {"w1": jax.random.normal(k[0], (34, 128)) / np.sqrt(34), "b1": jnp.zeros(128),
            "w2": jax.random.normal(k[1], (128, 128)) / np.sqrt(128), "b2": jnp.zeros(128),
            "w3": jnp.zeros((128, out)), "b3": jnp.zeros(out)}
  freqs = jnp.exp(jnp.linspace(np.log(1e-3), 0.0, 16))  # covers c_noise of every precond

  def net(p, x, c):
    e = jnp.concatenate([jnp.sin(c[:, None] * freqs), jnp.cos(c[:, None] * freqs)], -1)
    h = jax.nn.silu(jnp.concatenate([x, e], -1) @ p["w1"] + p["b1"])
    return jax.nn.silu(h @ p["w2"] + p["b2"]) @ p["w3"] + p["b3"]

  def D(p, x, s):
    return P.denoise(pc, lambda xi, c: net(p, xi, c), x, s)

  opt = optax.adam(2e-3)

  @optimized_jit  # 1,200 steps: execution, not compiling, is this test's cost
  def train(p, key):
    def step(carry, key):
      p, st = carry
      k1, k2 = jax.random.split(key)
      y = g.sample(k1, 512)
      grads = jax.grad(lambda p: L.denoising_loss(ls, lambda x, s: D(p, x, s), k2, y).mean())(p)
      upd, st = opt.update(grads, st)
      return (optax.apply_updates(p, upd), st), None
    return jax.lax.scan(step, (p, opt.init(p)), jax.random.split(key, 1200))[0][0]

  @jax.jit
  def rel_err(p, s):  # ‖D_θ − D*‖² relative to the irreducible ‖y − D*‖²
    y = g.sample(jax.random.key(99), 4096)
    x = y + s * jax.random.normal(jax.random.key(7), y.shape)
    ds = g.denoise(x, s)
    return jnp.mean(jnp.sum((D(p, x, s) - ds) ** 2, -1)) / jnp.mean(jnp.sum((y - ds) ** 2, -1))

  sig = jnp.array([0.05, 0.3, 1.0, 3.0])
  before = np.array([float(rel_err(params, s)) for s in sig])
  params = train(params, jax.random.key(1))
  after = np.array([float(rel_err(params, s)) for s in sig])
  assert np.all(after < 0.2), (before, after)
  assert np.all(after < before), (before, after)
