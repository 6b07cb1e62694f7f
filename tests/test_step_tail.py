"""One update tail for every family: the plain and the multi-stage step give the same update for
the same loss and gradients; the multi-stage step differs only by its stage mask."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import losses, precond as precond_lib
from jaxdiff.families.plain import denoising_loss
from jaxdiff.multistage.step import MultiStageConfig, keep_stage, multistage_loss, partitioned_adam
from jaxdiff.train.ema import ema_update
from jaxdiff.train.state import init_state
from jaxdiff.train.step import StepConfig, apply_update, train_step

BOUNDS = (0.5, 2.0)  # σ boundaries of three stages
LR, BATCH, HALFLIFE = 1e-2, 8, 100.0
B1, B2, EPS = 0.9, 0.999, 1e-8


def _setup():
  """A parameter tree laid out as the multi-stage network's (shared embedding and encoder, one
  decoder per stage, nested like nnx's) with few leaves: the update tail never runs the network
  (the losses below are linear in the parameters), so its layers do not matter here."""
  rng = np.random.default_rng(0)
  leaf = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
  params = {"embedding": {"map_layer0": {"weight": leaf(4, 8), "bias": leaf(8)}},
            "encoder": {"blocks": {"4x4_conv": {"weight": leaf(3, 3, 1, 4)}}},
            **{f"decoder_{k}": {"out_conv": {"weight": leaf(3, 3, 4, 1), "bias": leaf(1)},
                                "out_norm": {"scale": leaf(4)}} for k in range(3)}}
  opt = partitioned_adam(LR, BATCH, 1.0, beta1=B1, beta2=B2, eps=EPS)  # full lr from count 1
  cfg = StepConfig(graphdef=None, precond=precond_lib.EDMPrecond(), loss=losses.EDMLoss(),
                   optimizer=opt, label_dim=0, batch_size=BATCH, ema_halflife_images=HALFLIFE,
                   ema_rampup_ratio=None)
  ms = MultiStageConfig(BOUNDS, (0.5, 0.3, 0.2), "stochastic")
  return cfg, ms, params


def _part(path) -> str:
  return str(path[0].key)


def _random_tree(tree, seed, zero_parts=()):
  """Normal noise shaped like `tree`; zeros on the top-level parts named in `zero_parts` (what a
  stage's loss gives the decoders it does not run)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if _part(p) in zero_parts else jnp.asarray(
          rng.standard_normal(x.shape), jnp.float32), tree)


def _with_gradient(family_loss, grads):
  """`family_loss` with its per-step loss replaced by <grads, params>: everything else of the
  family (inputs, update mask, metrics) kept, and the gradient is exactly `grads`."""
  def linear(params, m, *inputs):
    return sum(jnp.sum(g * p) for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)))

  def loss(cfg, state, key, images, class_labels, aug_labels):
    return family_loss(cfg, state, key, images, class_labels, aug_labels)._replace(loss_fn=linear)
  return loss


def _np_adam(p, g0, g1, lr):
  """Two Adam steps' second update in float64: moments from g0 then g1, bias correction t = 2."""
  p, g0, g1 = (np.asarray(a, np.float64) for a in (p, g0, g1))
  m = B1 * (1 - B1) * g0 + (1 - B1) * g1
  v = B2 * (1 - B2) * g0**2 + (1 - B2) * g1**2
  m_hat, v_hat = m / (1 - B1**2), v / (1 - B2**2)
  return p - lr * m_hat / (np.sqrt(v_hat) + EPS)


def test_plain_and_multistage_steps_share_the_update():
  cfg, ms, params = _setup()
  k = 1  # the stage this step trains
  inactive = tuple(f"decoder_{j}" for j in range(3) if j != k)
  # A first update with gradients everywhere: every part has Adam moments and count 1, so the
  # mask below has something to keep (zero gradients alone would still move an idle decoder).
  g0 = _random_tree(params, seed=1)
  state, _ = jax.jit(lambda s, g: apply_update(cfg, s, g))(
      init_state(params, cfg.optimizer, 0), g0)
  grads = _random_tree(params, seed=2, zero_parts=inactive)
  batch = {"image": jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (BATCH, 4, 4, 1)),
                                jnp.float32),
           "label": jnp.zeros((BATCH,), jnp.int32)}

  # Each path as its own jitted program, as the families compile them.
  ms_loss = _with_gradient(multistage_loss(ms, stage=k), grads)
  plain_loss = _with_gradient(denoising_loss, grads)
  ms_state, ms_metrics = jax.jit(lambda s, b: train_step(cfg, ms_loss, s, b))(state, batch)
  plain_state, plain_metrics = jax.jit(lambda s, b: train_step(cfg, plain_loss, s, b))(state,
                                                                                       batch)
  direct_state, direct_metrics = jax.jit(lambda s, g: apply_update(cfg, s, g,
                                                                   keep=keep_stage(k)))(state, grads)

  # The multi-stage step is the shared tail with its stage's mask, bit for bit.
  chex.assert_trees_all_equal(ms_state, direct_state)
  assert int(ms_metrics["stage"]) == k
  # The plain step is the same tail without the mask: equal on every leaf the mask lets change.
  chex.assert_trees_all_equal(keep_stage(k)(plain_state.params, state.params), ms_state.params)
  chex.assert_trees_all_equal(keep_stage(k)(plain_state.opt_state, state.opt_state),
                              ms_state.opt_state)
  chex.assert_trees_all_equal(plain_state.step, ms_state.step)
  # Same loss, gradient norm and finiteness report from both families.
  loss = sum(np.sum(np.asarray(g, np.float64) * np.asarray(p, np.float64))
             for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(state.params)))
  gnorm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(grads)))
  for m in (ms_metrics, plain_metrics, direct_metrics):
    np.testing.assert_allclose(float(m["grad_norm"]), gnorm, rtol=1e-5)
    assert bool(m["grads_finite"])
  for m in (ms_metrics, plain_metrics):
    chex.assert_shape(m["loss"], ())
    chex.assert_type(m["loss"], jnp.float32)
    np.testing.assert_allclose(float(m["loss"]), loss, rtol=1e-4)

  # Independently: Adam in float64 on the parts the stage trains; the others keep theirs.
  old, new, plain = (jax.tree_util.tree_flatten_with_path(t.params)[0]
                     for t in (state, ms_state, plain_state))
  moved = 0
  for (path, p_old), (_, p_new), (_, p_plain), g_0, g_1 in zip(
      old, new, plain, jax.tree.leaves(g0), jax.tree.leaves(grads)):
    chex.assert_equal_shape([p_old, p_new, p_plain])
    chex.assert_type([p_new, p_plain], jnp.float32)
    if _part(path) in inactive:
      np.testing.assert_array_equal(p_new, p_old)
      moved += int(not np.array_equal(p_plain, p_old))  # the plain step moves them (momentum)
    else:
      np.testing.assert_allclose(p_new, _np_adam(p_old, g_0, g_1, LR), rtol=1e-4, atol=1e-7)
  assert moved > 0  # so the mask is what makes the difference, and it is not vacuous
  # The EMAs follow all parameters every step (β = 0.5^(batch / half-life), no ramp-up).
  beta = 0.5 ** (BATCH / HALFLIFE)
  chex.assert_trees_all_close(ms_state.ema, ema_update(state.ema, ms_state.params, jnp.float32(beta)),
                              rtol=1e-6, atol=1e-7)
  want = jax.tree.map(lambda e, p: beta * np.asarray(e, np.float64) + (1 - beta) * np.asarray(
      p, np.float64), state.ema, plain_state.params)
  chex.assert_trees_all_close(jax.tree.map(lambda x: np.asarray(x, np.float64), plain_state.ema),
                              want, rtol=1e-5, atol=1e-7)


def test_non_finite_gradients_are_reported_and_sanitized_before_adam():
  """A NaN and an inf in the gradients: grads_finite is False, grad_norm is not finite, and the
  update is Adam's on the sanitized gradients (NaN -> 0, inf -> 1e5), computed here in float64."""
  import optax
  params = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[0.25, 3.0]])}
  grads = {"a": jnp.array([jnp.nan, 0.5, -1.0]), "b": jnp.array([[jnp.inf, 2.0]])}
  lr = 0.1
  cfg = StepConfig(graphdef=None, precond=None, loss=None, optimizer=optax.adam(lr), label_dim=0,
                   batch_size=4, ema_halflife_images=100.0, ema_rampup_ratio=None)
  state = init_state(params, cfg.optimizer, seed=0)
  new, metrics = jax.jit(lambda s, g: apply_update(cfg, s, g))(state, grads)
  assert not bool(metrics["grads_finite"]) and not np.isfinite(float(metrics["grad_norm"]))
  for name, clean in (("a", [0.0, 0.5, -1.0]), ("b", [[1e5, 2.0]])):
    g = np.asarray(clean, np.float64)
    m, v = 0.1 * g, 0.001 * g * g              # one Adam step from zero moments
    m_hat, v_hat = m / (1 - 0.9), v / (1 - 0.999)
    want = np.asarray(params[name], np.float64) - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    chex.assert_type(new.params[name], jnp.float32)
    np.testing.assert_allclose(np.asarray(new.params[name]), want, rtol=1e-6, atol=2e-6)  # float32
  # A finite step reports the norm of its gradients.
  finite = {"a": jnp.array([3.0, 0.0, 0.0]), "b": jnp.array([[0.0, 4.0]])}
  _, metrics = jax.jit(lambda s, g: apply_update(cfg, s, g))(state, finite)
  assert bool(metrics["grads_finite"])
  np.testing.assert_allclose(float(metrics["grad_norm"]), 5.0, rtol=1e-7)
