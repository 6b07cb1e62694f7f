"""The discriminator network, its loss against NumPy, the reference's σ sampling, a tiny training
run that separates two easy distributions, and the checks of its inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxdiff import build, dg
from jaxdiff.config import load_config
from jaxdiff.discriminator import (REF_SIGMA_MAX, REF_SIGMA_MIN, DiscriminatorLoss,
                                   bce_with_logits, check_compatible, load_samples,
                                   log_ratio_fn, make_train_step, net_fn_of, vp_sigma)
from jaxdiff.errors import JaxdiffError
from jaxdiff.nets.discriminator import Discriminator

CFG = "configs/digits_discriminator.py"


def _net(label_dim=0, channels=8, seed=0):
  net = Discriminator(img_resolution=8, in_channels=1, label_dim=label_dim,
                      model_channels=channels, channel_mult=(1, 2), num_blocks=1,
                      rngs=nnx.Rngs(params=seed))
  return nnx.split(net, nnx.Param)


def test_network_shapes_and_label_conditioning():
  graphdef, params = _net(label_dim=10)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 8, 8, 1))
  labels = jax.nn.one_hot(jnp.arange(5), 10)
  net = jax.jit(net_fn_of(graphdef, params))
  out = net(x, jnp.zeros(5), labels)
  chex.assert_shape(out, (5,))
  assert out.dtype == jnp.float32
  # Each sample's logit depends on its own input only.
  alone = net(x[:1], jnp.zeros(1), labels[:1])
  np.testing.assert_allclose(np.asarray(out[:1]), np.asarray(alone), rtol=1e-5, atol=1e-6)


def test_config_builds_the_registered_discriminator():
  cfg = load_config(CFG, ["--config.discriminator.model=/m", "--config.discriminator.samples=s.npz"])
  assert (cfg.model.arch, cfg.discriminator.model, cfg.discriminator.samples) == (
      "discriminator", "/m", "s.npz")
  assert cfg.discriminator.sigma_min == pytest.approx(REF_SIGMA_MIN, rel=1e-4)
  assert cfg.discriminator.sigma_max == pytest.approx(REF_SIGMA_MAX, rel=1e-4)
  from jaxdiff.nets import build_network
  n = build.network_spec(cfg)  # the full Experiment needs real inputs: test_discriminator_family
  net = build_network(n.as_dict(), img_resolution=n.img_resolution, img_channels=n.img_channels,
                      label_dim=n.label_dim, rngs=nnx.Rngs(params=0))
  assert isinstance(net, Discriminator)


def test_bce_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=64) * 4
  y = (rng.uniform(size=64) > 0.5).astype(np.float64)
  p = 1 / (1 + np.exp(-logits))
  want = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
  got = bce_with_logits(jnp.asarray(logits, jnp.float32), jnp.asarray(y, jnp.float32))
  chex.assert_shape(got, ())
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_loss_matches_numpy_on_a_linear_discriminator():
  """Same key -> same σ and noise: the whole loss recomputed in NumPy from those draws."""
  loss = DiscriminatorLoss(sigma_min=0.01, sigma_max=10.0)
  rng = np.random.default_rng(1)
  a = rng.normal(size=(4,))
  real, fake = rng.normal(size=(3, 2, 2, 1)), rng.normal(size=(2, 2, 2, 1)) + 1
  net = lambda x, c_noise, labels: x.reshape(x.shape[0], -1) @ jnp.asarray(a, jnp.float32) + c_noise  # noqa: E731
  key = jax.random.PRNGKey(3)
  got, metrics = loss(net, jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32), key)
  k_sigma, k_noise = jax.random.split(key)
  sigma = np.asarray(loss.sample_sigma(k_sigma, 5), np.float64)
  n = np.asarray(jax.random.normal(k_noise, (5, 2, 2, 1)), np.float64)
  x = np.concatenate([real, fake]) + sigma[:, None, None, None] * n
  logit = (x / np.sqrt(sigma**2 + 0.25)[:, None, None, None]).reshape(5, -1) @ a + np.log(sigma) / 4
  y = np.array([1, 1, 1, 0, 0.0])
  want = np.mean(np.log1p(np.exp(-logit)) * y + np.log1p(np.exp(logit)) * (1 - y))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["accuracy"]), np.mean((logit > 0) == (y > 0.5)))


def test_sigma_sampling_is_the_references_importance_sampling():
  """The reference inverts A(t) = log(exp(∫β) − 1) at A(t_min) + Z·u; mapped to σ it must equal
  our log-uniform draw at the same u."""
  u = np.linspace(0.001, 0.999, 101)
  b0, b1, t_min = 0.1, 20.0, 1e-5

  def A(t):
    ib = 0.5 * t**2 * (b1 - b0) + t * b0
    return np.log(1 - np.exp(-ib)) + ib
  Z = A(1.0) - A(t_min)
  t = (-b0 + np.sqrt(b0**2 + 2 * (b1 - b0) * np.log(1 + np.exp(Z * u + A(t_min))))) / (b1 - b0)
  ref_sigma = vp_sigma(t)
  ours = np.exp(np.log(REF_SIGMA_MIN) + u * (np.log(REF_SIGMA_MAX) - np.log(REF_SIGMA_MIN)))
  np.testing.assert_allclose(ours, ref_sigma, rtol=1e-6)
  # And the jax draw is that log-uniform law: ln σ has the uniform's mean and variance.
  s = np.log(np.asarray(DiscriminatorLoss().sample_sigma(jax.random.PRNGKey(0), 20000)))
  lo, hi = np.log(REF_SIGMA_MIN), np.log(REF_SIGMA_MAX)
  assert s.min() >= lo - 1e-5 and s.max() <= hi + 1e-5
  assert abs(s.mean() - (lo + hi) / 2) < 4 * (hi - lo) / np.sqrt(12 * 20000)
  assert abs(s.var() / ((hi - lo) ** 2 / 12) - 1) < 0.05


def test_tiny_discriminator_separates_two_easy_distributions():
  """Real: bright left half; fake: bright right half. After 100 Adam steps the discriminator is
  right at low σ, near chance at σ = 80 (the noise hides the difference), and its guidance
  gradient points from the fake half towards the real one."""
  graphdef, params = _net(channels=8)
  loss = DiscriminatorLoss(sigma_min=0.01, sigma_max=10.0)
  optimizer = optax.adam(3e-3)
  step = jax.jit(make_train_step(graphdef, loss, optimizer))
  opt_state = optimizer.init(params)
  left = jnp.zeros((8, 8, 1)).at[:, :4].set(1.0) - 0.5
  rng = np.random.default_rng(0)
  for i in range(100):
    jitter = jnp.asarray(rng.normal(size=(32, 8, 8, 1)) * 0.1, jnp.float32)
    real, fake = left + jitter[:16], left[:, ::-1] + jitter[16:]
    params, opt_state, metrics = step(params, opt_state, real, fake, jax.random.PRNGKey(i))
  assert np.isfinite(float(metrics["loss"]))
  key = jax.random.PRNGKey(999)
  net = net_fn_of(graphdef, params)

  @jax.jit
  def acc_fn(sigma):
    x = jnp.concatenate([jnp.broadcast_to(left, (64, 8, 8, 1)),
                         jnp.broadcast_to(left[:, ::-1], (64, 8, 8, 1))])
    x = x + sigma * jax.random.normal(key, x.shape)
    logits = loss.logits(net, x, jnp.full((128,), sigma))
    return jnp.mean((logits > 0) == (jnp.arange(128) < 64))
  acc = lambda sigma: float(acc_fn(jnp.float32(sigma)))  # noqa: E731
  assert acc(0.05) > 0.95
  assert acc(80.0) < 0.75
  # At moderate σ (where a 100-step discriminator is not saturated) its guidance gradient at
  # noisy fakes points from the fake half towards the real one: <g, real − fake> > 0.
  log_ratio = jax.jit(log_ratio_fn(loss, graphdef, params))
  for sigma in (1.0, 3.0):
    x = left[:, ::-1] + sigma * jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    g = dg.guidance_gradient(log_ratio, x, jnp.full((4,), sigma))
    chex.assert_shape(g, (4, 8, 8, 1))
    assert float(jnp.sum(g * (left - left[:, ::-1]))) > 0, sigma


def test_samples_file_checks(tmp_path):
  good = tmp_path / "s.npz"
  np.savez(good, images=np.full((6, 8, 8, 1), 255, np.uint8), labels=np.arange(6, dtype=np.int32))
  x, labels = load_samples(str(good), 8, 1, 10)
  chex.assert_shape(x, (6, 8, 8, 1))
  assert x.dtype == np.float32 and np.all(x == 1.0) and labels.tolist() == list(range(6))
  bad = tmp_path / "b.npz"
  np.savez(bad, images=np.zeros((6, 16, 16, 1), np.uint8), labels=np.arange(6))
  for path, needle in ((bad, "shape"), (tmp_path / "none.npz", "does not exist")):
    with pytest.raises(JaxdiffError, match=needle) as e:
      load_samples(str(path), 8, 1, 10)
    assert "\n" not in str(e.value)
  np.savez(bad, images=np.zeros((6, 8, 8, 1), np.uint8), labels=np.arange(6) + 5)
  with pytest.raises(JaxdiffError, match="labels"):
    load_samples(str(bad), 8, 1, 10)
  np.savez(bad, images=np.zeros((6, 8, 8, 1), np.uint8))
  with pytest.raises(JaxdiffError, match="no 'labels'"):
    load_samples(str(bad), 8, 1, 10)


def test_compatibility_check():
  data = lambda path, *o: build.data_spec(load_config(path, list(o)))  # noqa: E731
  disc = data(CFG)
  model = data("configs/digits.py")
  check_compatible(disc, model)  # same data: fine
  other = data("configs/digits.py", "--config.data.num_classes=0")
  with pytest.raises(JaxdiffError, match="10 classes") as e:
    check_compatible(disc, other)
  assert "\n" not in str(e.value)
  with pytest.raises(JaxdiffError, match="16x16"):
    check_compatible(disc, data("configs/digits.py", "--config.data.resolution=16"))
