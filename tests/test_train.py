import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DIGITS, TINY
from jaxdiff import build
from jaxdiff.config import load_config
from jaxdiff.errors import JaxdiffError
from jaxdiff.train import checkpoint as ckpt_lib
from jaxdiff.train.ema import ema_beta, ema_update
from jaxdiff.train.loop import train
from jaxdiff.train.optim import lr_schedule, sanitize_grads
from jaxdiff.train.state import init_state


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
  from jaxdiff.train.step import StepConfig, make_train_step
  cfg = tiny_cfg
  graphdef, params = build.make_network(cfg)
  optimizer = build.make_optimizer(cfg)
  sc = StepConfig(graphdef, build.make_precond(cfg), build.make_loss(cfg), optimizer, 10, 16,
                  cfg.training.ema_halflife_images, cfg.training.ema_rampup_ratio)
  # A constant lr (no ramp-up) so a few steps visibly fit one batch.
  import optax
  sc = StepConfig(**{**sc.__dict__, "optimizer": optax.adam(3e-3)})
  state = init_state(params, sc.optimizer, 0)
  src = build.make_source(cfg)
  images, labels = src.get(np.arange(16))
  batch = {"image": images, "label": labels}
  step = make_train_step(sc)

  from jaxdiff import losses
  from jaxdiff.train.step import make_denoiser

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
  abstract = jax.eval_shape(lambda p: init_state(p, build.make_optimizer(cfg), 0), params)
  mngr = ckpt_lib.manager(workdir, async_save=False)
  state, meta = ckpt_lib.restore(mngr, abstract)
  mngr.close()
  return state, meta


def test_checkpoint_round_trip(tmp_path, tiny_cfg):
  graphdef, params = build.make_network(tiny_cfg)
  state = init_state(params, build.make_optimizer(tiny_cfg), 7)
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
