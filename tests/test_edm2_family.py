"""The EDM2 family: its spec, optimizer, and one train step against hand-written computations
(forced weight normalisation, the loss with u(σ) written out, Adam's first step, the power EMA)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff import build, families
from jaxdiff.config import load_config
from jaxdiff.errors import JaxdiffError
from jaxdiff.families import edm2 as F
from jaxdiff.train.step import train_step

EDM2 = "configs/digits_edm2.py"
TINY_EDM2 = ["--config.model.model_channels=8", "--config.model.channel_mult=(1,)",
             "--config.model.num_blocks=1", "--config.model.attn_resolutions=()",
             "--config.model.channels_per_head=8", "--config.model.logvar_channels=8",
             "--config.training.batch_size=8"]


def _exp(*extra):
  return build.experiment(load_config(EDM2, TINY_EDM2 + list(extra)))


def test_spec_from_the_edm2_section():
  exp = _exp("--config.edm2.ema_stds=(0.05,0.075,0.1)", "--config.edm2.snapshot_every_images=16")
  assert exp.family == "edm2" and families.for_arch("edm2").name == "edm2"
  assert exp.family_spec == F.EDM2Spec(ref_batches=800.0, ema_stds=(0.05, 0.075, 0.1),
                                       snapshot_every_images=16)
  assert families.num_emas(exp) == 3
  _, abstract = families.abstract_state(exp)
  assert len(abstract.extra_emas) == 2


@pytest.mark.parametrize("override,message", [
    ("--config.edm2.snapshot_every_images=12", "not a multiple of the batch"),
    ("--config.edm2.ema_stds=(0.05,0.3)", "outside (0, 0.289)"),
    ("--config.edm2.ema_stds=(0.05,0.05)", "twice"),
    ("--config.loss.name=edm", "loss.name='edm2'"),
])
def test_spec_errors(override, message):
  with pytest.raises(JaxdiffError, match=message.replace("(", r"\(").replace(")", r"\)")):
    _exp(override)


def test_spec_refuses_keys_of_other_sections():
  cfg = load_config(EDM2, TINY_EDM2)
  with cfg.unlocked():
    cfg.edm2.P_mean = -0.4
  with pytest.raises(JaxdiffError, match="loss.P_mean"):
    build.experiment(cfg)
  cfg = load_config(EDM2, TINY_EDM2)
  with cfg.unlocked():
    cfg.edm2.ref_btaches = 3
  with pytest.raises(JaxdiffError, match="no key 'ref_btaches'"):
    build.experiment(cfg)


def test_optimizer_lr_is_the_reference_schedule():
  exp = _exp()
  tx = families.make_optimizer(exp)
  params = {"w": jnp.ones((3,))}
  state = tx.init(params)
  g = {"w": jnp.array([1.0, -2.0, 0.5])}
  # Step k uses lr(t = k·batch): 0 at k = 0, then ref_lr·min(t/rampup, 1)/√max(t/(ref_b·batch), 1).
  for k in range(3):
    upd, state = tx.update(g, state, params)
    t = k * 8.0
    lr = 0.01 * min(t / 20_000, 1.0) / np.sqrt(max(t / (800 * 8), 1.0))
    # Adam with constant g: m̂ = g, v̂ = g², so the update is −lr·g/(|g| + ε).
    np.testing.assert_allclose(np.asarray(upd["w"]), -lr * np.sign([1.0, -2.0, 0.5]), rtol=1e-5,
                               atol=1e-12)


def _normalize64(w):
  w = np.asarray(w, np.float64)
  axes = tuple(range(w.ndim - 1))
  fan_in = int(np.prod(w.shape[:-1]))
  return w / (1e-4 + np.sqrt((w ** 2).sum(axis=axes, keepdims=True)) / np.sqrt(fan_in))


def _batch(n=8):
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.uniform(-1, 1, (n, 8, 8, 1)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


def test_train_step_matches_hand_computation():
  # Constant lr (no ramp-up, no decay): the first Adam step is −lr·g/(|g| + ε), g the gradient.
  exp = _exp("--config.training.lr_rampup_images=0", "--config.edm2.ref_batches=0",
             "--config.edm2.ema_stds=(0.05,0.1)")
  lr = exp.optimizer.lr
  graphdef, params = families.make_network(exp, seed=3)
  # Unnormalised stored weights, as after an Adam step: forced normalisation must visibly act.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 1.7 if "weight" in jax.tree_util.keystr(p) else x, params)
  opt = families.make_optimizer(exp)
  state = families.train_state(exp, params, opt)
  cfg = families.step_config(exp, graphdef, opt)
  batch = _batch()
  step = jax.jit(lambda s, b: train_step(cfg, F.edm2_loss, s, b))
  new, metrics = step(state, batch)

  # p: every `weight` leaf normalised in float64; gains untouched.
  p = jax.tree_util.tree_map_with_path(
      lambda k, x: jnp.asarray(_normalize64(x), jnp.float32)
      if "weight" in jax.tree_util.keystr(k) else x, params)

  # The loss written out (Eq. 21 with EDM's preconditioning), keys as the step draws them.
  key = jax.random.fold_in(state.rng, 0)
  loss_key, dropout_key = jax.random.split(key)
  k_sigma, k_noise = jax.random.split(loss_key)
  y = batch["image"]
  c = jax.nn.one_hot(batch["label"], 10)
  sigma = jnp.exp(jax.random.normal(k_sigma, (8,)) * 1.6 - 0.8)
  n = jax.random.normal(k_noise, y.shape) * sigma[:, None, None, None]
  sd = 0.5

  def loss(pp):
    net = nnx.merge(graphdef, pp)
    s = sigma[:, None, None, None]
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / jnp.sqrt(s**2 + sd**2)
    c_in = 1 / jnp.sqrt(s**2 + sd**2)
    Fx, u = net(c_in * (y + n), jnp.log(sigma) / 4, c, None, train=True,
                rngs=nnx.Rngs(dropout=dropout_key), return_logvar=True)
    D = c_skip * (y + n) + c_out * Fx
    w = (s**2 + sd**2) / (s * sd) ** 2
    per = w / jnp.exp(u[:, None, None, None]) * (D - y) ** 2 + u[:, None, None, None]
    return jnp.sum(per) / 8

  want_loss, g = jax.jit(jax.value_and_grad(loss))(p)
  np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-5)
  want = jax.tree.map(lambda pi, gi: pi - lr * gi / (jnp.abs(gi) + 1e-8), p, g)
  chex.assert_trees_all_close(new.params, want, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_equal_shapes_and_dtypes(new.params, params)
  # Not the update of the stored weights (the gradient at p, added to p).
  w_new = np.asarray(new.params["logvar_linear"]["weight"][...])
  w_old = np.asarray(params["logvar_linear"]["weight"][...])
  g_logvar = np.asarray(g["logvar_linear"]["weight"][...])
  assert np.abs(g_logvar).max() > 0  # the uncertainty head is trained
  assert not np.allclose(w_new, w_old - lr * np.sign(g_logvar), atol=1e-3)

  # The power EMAs: after step 1 (t = batch) β = 0, so both equal the new weights; after step 2,
  # β = (1 − 1/2)^(γ+1) with γ the largest root of γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²).
  chex.assert_trees_all_close(new.ema, new.params)
  chex.assert_trees_all_close(new.extra_emas[0], new.params)
  new2, _ = step(new, batch)
  for std, ema in zip((0.05, 0.1), (new2.ema, new2.extra_emas[0])):
    gamma = np.roots([1, 7, 16 - std**-2, 12 - std**-2]).real.max()
    beta = 0.5 ** (gamma + 1)
    want_ema = jax.tree.map(lambda e, q: beta * np.asarray(e, np.float64)
                            + (1 - beta) * np.asarray(q, np.float64), new.ema, new2.params)
    chex.assert_trees_all_close(jax.tree.map(lambda x: np.asarray(x, np.float64), ema), want_ema,
                                rtol=1e-5, atol=1e-6)


def test_non_finite_gradients_become_zero():
  from jaxdiff.edm2_loss import sanitize_grads_edm2
  exp = _exp()
  cfg = families.step_config(exp, None, families.make_optimizer(exp))
  assert cfg.sanitize is sanitize_grads_edm2 and cfg.ema.stds == (0.05, 0.1)
  g = sanitize_grads_edm2({"a": jnp.array([np.nan, np.inf, -np.inf, 3.0])})
  np.testing.assert_array_equal(np.asarray(g["a"]), [0, 0, 0, 3.0])
