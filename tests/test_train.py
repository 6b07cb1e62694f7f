import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DIGITS, TINY
from jaxdiff import build, families
from jaxdiff.config import load_config
from jaxdiff.errors import JaxdiffError
from jaxdiff.train import checkpoint as ckpt_lib
from jaxdiff.train.ema import ema_beta, ema_update
from jaxdiff.build import run_training as train
from jaxdiff.train.optim import lr_schedule, sanitize_grads
from jaxdiff.train.state import init_state


def compile_plain(sc):
  """The plain family's step as `jaxdiff train` compiles it (buffers donated)."""
  from jaxdiff.families.plain import denoising_loss
  return families.default_compile_step(denoising_loss, sc, donate_argnums=0)


def test_ema_beta_matches_reference_formula():
  batch, halflife, ratio = 512, 500_000, 0.05
  for images_seen in [0, 512, 1_000_000, 20_000_000]:
    h = min(halflife, images_seen * ratio)
    expected = 0.5 ** (batch / max(h, 1e-8))
    np.testing.assert_allclose(float(ema_beta(images_seen, batch, halflife, ratio)), expected,
                               rtol=1e-6)
  assert float(ema_beta(0, batch, halflife, ratio)) == 0.0  # first step copies the weights
  np.testing.assert_allclose(float(ema_beta(0, batch, halflife, None)), 0.5 ** (512 / 5e5),
                             rtol=1e-6)


def test_ema_update():
  ema, params = {"w": jnp.array([0.0, 2.0])}, {"w": jnp.array([1.0, 4.0])}
  out = ema_update(ema, params, jnp.float32(0.25))
  np.testing.assert_allclose(out["w"], [0.75, 3.5])  # beta·ema + (1-beta)·params


def test_lr_rampup():
  sched = lr_schedule(1e-3, batch_size=512, rampup_images=10_000_000)
  for step in [0, 1, 1000, 19_531, 19_532, 100_000]:
    expected = 1e-3 * min(step * 512 / 1e7, 1.0)
    np.testing.assert_allclose(float(sched(jnp.int32(step))), expected, rtol=1e-5, atol=1e-12)


def test_sanitize_grads():
  g = {"a": jnp.array([jnp.nan, jnp.inf, -jnp.inf, 2.0])}
  np.testing.assert_array_equal(sanitize_grads(g)["a"], [0.0, 1e5, -1e5, 2.0])


def test_train_step_reduces_loss_on_fixed_batch(tiny_cfg):
  from jaxdiff.train.step import StepConfig
  cfg = tiny_cfg
  graphdef, params = families.make_network(build.experiment(cfg))
  optimizer = families.make_optimizer(build.experiment(cfg))
  sc = StepConfig(graphdef, build.make_precond(cfg), build.make_loss(cfg), optimizer, 10, 16,
                  cfg.training.ema_halflife_images, cfg.training.ema_rampup_ratio)
  # A constant lr (no ramp-up) so a few steps visibly fit one batch.
  import optax
  sc = StepConfig(**{**sc.__dict__, "optimizer": optax.adam(3e-3)})
  state = init_state(params, sc.optimizer, 0)
  src = build.make_source(cfg)
  images, labels = src.get(np.arange(16))
  batch = {"image": images, "label": labels}
  step = compile_plain(sc)

  from jaxdiff import losses
  from jaxdiff.denoiser import make_denoiser

  def fixed_loss(params):
    # Same σ and noise before and after training (the step itself draws fresh ones).
    denoise = make_denoiser(graphdef, params, sc.precond)
    onehot = jax.nn.one_hot(labels, 10)
    return float(jnp.mean(jnp.stack([
        losses.denoising_loss(sc.loss, denoise, jax.random.PRNGKey(k), images,
                              class_labels=onehot) for k in range(8)])))

  before = fixed_loss(state.params)
  for _ in range(60):
    state, m = step(state, batch)
  chex.assert_tree_all_finite(state.params)
  assert int(state.step) == 60
  assert fixed_loss(state.params) < 0.8 * before


def _params_of(workdir, cfg):
  graphdef, params = build.abstract_network(cfg)
  abstract = jax.eval_shape(lambda p: init_state(p, families.make_optimizer(build.experiment(cfg)), 0), params)
  mngr = ckpt_lib.manager(workdir, async_save=False)
  state, meta = ckpt_lib.restore(mngr, abstract)
  mngr.close()
  return state, meta


def test_checkpoint_round_trip(tmp_path, tiny_cfg):
  graphdef, params = families.make_network(build.experiment(tiny_cfg))
  state = init_state(params, families.make_optimizer(build.experiment(tiny_cfg)), 7)
  state = state.replace(step=jnp.int32(3))
  mngr = ckpt_lib.manager(str(tmp_path), async_save=False)
  ckpt_lib.save(mngr, 3, state, {"step": 3})
  mngr.wait_until_finished()
  abstract = jax.eval_shape(lambda: state)
  back, meta = ckpt_lib.restore(mngr, abstract)
  assert meta["step"] == 3
  # The recorded checksum is Σ|x| of params, EMA and Adam state, recomputed here with NumPy.
  sums = [sum(float(np.abs(np.asarray(x, np.float64)).sum()) for x in jax.tree.leaves(t))
          for t in (state.params, state.ema, state.opt_state)]
  np.testing.assert_allclose(meta["checksum"], sums, rtol=1e-5)
  chex.assert_trees_all_equal(back, state)


def test_resume_continues_exactly(tmp_path):
  straight = load_config(DIGITS, TINY)
  train(straight, str(tmp_path / "a"))
  half = load_config(DIGITS, TINY + ["--config.training.steps=2"])
  train(half, str(tmp_path / "b"))
  summary = train(straight, str(tmp_path / "b"))  # same workdir, longer run: resumes at step 2
  assert summary["start_step"] == 2 and summary["steps"] == 4
  a, _ = _params_of(str(tmp_path / "a"), straight)
  b, _ = _params_of(str(tmp_path / "b"), straight)
  assert int(a.step) == int(b.step) == 4
  chex.assert_trees_all_equal(a.params, b.params)
  chex.assert_trees_all_equal(a.ema, b.ema)
  chex.assert_trees_all_equal(a.opt_state, b.opt_state)


def test_other_config_refused_and_nothing_deleted(tmp_path):
  cfg = load_config(DIGITS, TINY + ["--config.training.steps=2"])
  train(cfg, str(tmp_path))
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
  other = load_config(DIGITS, TINY + ["--config.model.model_channels=16"])
  with pytest.raises(JaxdiffError, match="model.model_channels"):
    train(other, str(tmp_path))
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def _sgd_step_cfg(cfg, **kw):
  """A StepConfig whose optimizer is plain SGD with lr 1: params_new = params − grads."""
  import optax
  from jaxdiff.train.step import StepConfig
  graphdef, params = families.make_network(build.experiment(cfg))
  sc = StepConfig(graphdef, build.make_precond(cfg), build.make_loss(cfg), optax.sgd(1.0), 10, 16,
                  cfg.training.ema_halflife_images, None, **kw)
  return sc, params


def test_grad_accum_and_several_emas(tiny_cfg):
  from jaxdiff import losses
  from jaxdiff.denoiser import make_denoiser
  halflives = (1000.0, 40.0)
  sc, params = _sgd_step_cfg(tiny_cfg, grad_accum=2)
  sc = sc.__class__(**{**sc.__dict__, "ema_halflife_images": halflives})
  state = init_state(params, sc.optimizer, 5, num_emas=2)
  images, labels = build.make_source(tiny_cfg).get(np.arange(16))
  step = compile_plain(sc)
  p0 = jax.device_get(state.params)
  state1, m1 = step(state, {"image": images, "label": labels})
  p1 = jax.device_get(state1.params)
  state2, _ = step(state1, {"image": images, "label": labels})
  p2 = jax.device_get(state2.params)

  # Gradient accumulation: the mean of the gradients of micro-batches m = examples m, m+2, ...,
  # each with key fold_in(step key, m), recomputed here without the step's scan.
  key = jax.random.fold_in(jax.random.PRNGKey(5), 0)

  @functools.partial(jax.jit, static_argnums=1)
  def micro_grad(params, m):
    k = jax.random.fold_in(key, m)
    loss_key, dropout_key = jax.random.split(k)
    sel = np.arange(m, 16, 2)
    def loss(p):
      d = make_denoiser(sc.graphdef, p, sc.precond, train=True, dropout_key=dropout_key)
      return jnp.mean(losses.denoising_loss(sc.loss, d, loss_key, images[sel],
                                            class_labels=jax.nn.one_hot(labels[sel], 10)))
    return jax.value_and_grad(loss)(params)

  (l0, g0), (l1, g1) = micro_grad(p0, 0), micro_grad(p0, 1)
  np.testing.assert_allclose(float(m1["loss"]), (float(l0) + float(l1)) / 2, rtol=1e-5)
  expected = jax.tree.map(lambda p, a, b: p - (a + b) / 2, p0, g0, g1)
  for got, want in zip(jax.tree.leaves(p1), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

  # Two EMAs, no ramp-up: e1 = p1 + (p0 − p1)·β, e2 = p2 + (e1 − p2)·β, β = 0.5^(16 / h).
  emas = (state2.ema,) + state2.extra_emas
  assert len(emas) == 2
  for h, ema in zip(halflives, emas):
    beta = 0.5 ** (16 / h)
    for e, a, b, c in zip(jax.tree.leaves(ema), jax.tree.leaves(p0), jax.tree.leaves(p1),
                          jax.tree.leaves(p2)):
      e1 = np.float64(b) + (np.float64(a) - b) * beta
      np.testing.assert_allclose(e, np.float64(c) + (e1 - c) * beta, rtol=1e-5, atol=1e-7)


def test_bf16_compute_keeps_fp32_islands(tiny_cfg):
  from jaxdiff import losses
  from jaxdiff.denoiser import make_denoiser, net_apply
  bf_cfg = load_config(DIGITS, TINY + ["--config.model.dtype=bfloat16"])
  sc32, p32 = _sgd_step_cfg(tiny_cfg)
  sc16, p16 = _sgd_step_cfg(bf_cfg)
  chex.assert_trees_all_equal(p32, p16)                 # params stay fp32 (param_dtype)
  images, labels = build.make_source(tiny_cfg).get(np.arange(16))
  # Non-zero output layers, so the network's precision shows in D.
  p = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), p32)
  jaxpr = str(jax.make_jaxpr(lambda p: net_apply(sc16.graphdef, p, images, jnp.zeros(16),
                                                 jax.nn.one_hot(labels, 10)))(p))
  assert "bf16[16,8,8,8]" in jaxpr                       # the convolutions run in bf16

  def loss(sc):
    d = make_denoiser(sc.graphdef, p, sc.precond)
    return losses.denoising_loss(sc.loss, d, jax.random.PRNGKey(2), images,
                                 class_labels=jax.nn.one_hot(labels, 10))
  l32, l16 = jax.jit(lambda: loss(sc32))(), jax.jit(lambda: loss(sc16))()
  chex.assert_type([l32, l16], jnp.float32)              # loss weights and loss in fp32
  np.testing.assert_allclose(np.mean(l16), np.mean(l32), rtol=0.05)
  state = init_state(p16, sc16.optimizer, 0)
  state, metrics = compile_plain(sc16)(state, {"image": images, "label": labels})
  chex.assert_type(metrics["loss"], jnp.float32)
  for tree in (state.params, state.ema):
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tree))
  assert bool(metrics["grads_finite"])


def test_classifier_free_guidance_matches_manual(tiny_cfg):
  from jaxdiff import sampling
  from jaxdiff.model import make_sample_fn, sample_keys
  from jaxdiff.denoiser import make_denoiser
  graphdef, params = families.make_network(build.experiment(tiny_cfg))
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(3), x.shape),
                        params)
  kwargs = dict(build.experiment(tiny_cfg).sampling.kwargs(solver="euler", num_steps=2))
  precond = build.make_precond(tiny_cfg)
  keys, labels = sample_keys(0, 0, 4), jnp.array([0, 3, 5, 9], jnp.int32)
  w = 2.5
  got = make_sample_fn(graphdef, precond, 10, (8, 8, 1), tuple(sorted(kwargs.items())), w)(
      params, keys, labels)
  latents = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (8, 8, 1)))(keys)
  d = make_denoiser(graphdef, params, precond)
  onehot = jax.nn.one_hot(labels, 10)

  def guided(x, sigma):   # two separate evaluations; the null label is the all-zero one-hot
    du = d(x, sigma, class_labels=jnp.zeros_like(onehot))
    return du + w * (d(x, sigma, class_labels=onehot) - du)
  want = sampling.sample(guided, latents, key=None, **kwargs)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # doubled batch reorders sums
  plain = make_sample_fn(graphdef, precond, 10, (8, 8, 1), tuple(sorted(kwargs.items())))(
      params, keys, labels)
  assert np.abs(np.asarray(plain) - np.asarray(got)).max() > 1e-3   # guidance changes samples
