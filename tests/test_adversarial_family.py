"""The adversarial family (jaxdiff/families/adversarial.py): DDGAN's non-saturating losses against
NumPy float64, one step updates both networks (the denoiser with λ = 0 exactly as the plain
family), a fine-tuned workdir is an ordinary one, and bad inputs are one-line refusals."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DIGITS, ROOT, TINY, run_main
from jaxdiff import build, families
from jaxdiff.build import run_training as train
from jaxdiff.config import load_config
from jaxdiff.errors import JaxdiffError
from jaxdiff.families import adversarial as adv
from jaxdiff.families.plain import denoising_loss
from jaxdiff.train.step import train_step

ADV = os.path.join(ROOT, "configs", "digits_adversarial.py")
ATINY = ["--config.adversarial.disc.model_channels=8",
         "--config.adversarial.disc.channel_mult=(1,)", "--config.adversarial.weight=0.5",
         "--config.adversarial.r1_gamma=0.3"]


def _softplus64(x):
  return np.logaddexp(0.0, np.asarray(x, np.float64))


def test_generator_and_discriminator_losses_match_numpy():
  real = np.array([2.0, -0.5, 0.0, 7.5, -3.0], np.float32)
  fake = np.array([-1.0, 0.25, 4.0, -9.0], np.float32)
  grad_sq = np.array([0.1, 2.0, 0.0, 1.5, 0.7], np.float32)
  g = adv.generator_loss(jnp.asarray(fake))
  chex.assert_shape(g, ())
  chex.assert_type(g, jnp.float32)
  # E[-log sigmoid(l)] by hand
  want_g = np.mean(-np.log(1 / (1 + np.exp(-fake.astype(np.float64)))))
  np.testing.assert_allclose(float(g), want_g, rtol=1e-6)
  d = adv.discriminator_loss(jnp.asarray(real), jnp.asarray(fake), jnp.asarray(grad_sq), 0.3)
  chex.assert_shape(d, ())
  want_d = (np.mean(_softplus64(-real)) + np.mean(_softplus64(fake))
            + 0.3 / 2 * np.mean(grad_sq.astype(np.float64)))
  np.testing.assert_allclose(float(d), want_d, rtol=1e-6)
  # BCE form: -log d(real) - log(1 - d(fake)) with d = sigmoid(l)
  sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))  # noqa: E731
  np.testing.assert_allclose(float(adv.discriminator_loss(jnp.asarray(real), jnp.asarray(fake))),
                             np.mean(-np.log(sig(real))) + np.mean(-np.log(1 - sig(fake))),
                             rtol=1e-6)


def _exp(*extra):
  return build.experiment(load_config(ADV, TINY + ATINY + ["--config.adversarial.init=/nowhere",
                                                           *extra]))


def test_config_selects_the_family_and_refuses_bad_sections():
  exp = _exp()
  assert exp.family == "adversarial"
  spec = exp.family_spec
  assert (spec.weight, spec.r1_gamma, spec.disc_net.arch) == (0.5, 0.3, "discriminator")
  assert (spec.disc_net.label_dim, spec.disc_net.img_resolution) == (10, 8)
  with pytest.raises(JaxdiffError, match="adversarial.init=DIR"):
    build.experiment(load_config(ADV, TINY))
  with pytest.raises(JaxdiffError, match="must be >= 0"):
    _exp("--config.adversarial.weight=-1")


def test_disc_objective_is_the_hand_computed_loss_with_r1():
  """L_D of a tiny discriminator on given real / fake images equals softplus means plus
  γ/2·E‖∇_x l‖², each gradient taken per example with jax.grad, summed in float64."""
  spec = _exp().family_spec
  graphdef, params = adv.disc_network(spec, 0)
  rng = np.random.default_rng(0)
  real = jnp.asarray(rng.uniform(-1, 1, (6, 8, 8, 1)), jnp.float32)
  fake = jnp.asarray(rng.uniform(-1, 1, (6, 8, 8, 1)), jnp.float32)
  labels = jax.nn.one_hot(np.arange(6) % 10, 10)
  key = jax.random.PRNGKey(3)
  loss, metrics = adv.disc_objective(spec, graphdef, params, key, real, fake, labels)
  chex.assert_shape(loss, ())

  k_real, k_fake, k_drop = jax.random.split(key, 3)
  logit = adv.disc_logit_fn(spec, graphdef, params, dropout_key=k_drop)
  x_r, s_r = adv.diffuse(spec.d_loss, k_real, real)
  x_f, s_f = adv.diffuse(spec.d_loss, k_fake, fake)
  lr = np.asarray(logit(x_r, s_r, labels), np.float64)
  lf = np.asarray(logit(x_f, s_f, labels), np.float64)
  grad_one = jax.jit(jax.grad(lambda x, s, lab: logit(x[None], s, lab)[0]))
  sq = []
  for i in range(6):  # one example at a time: no cross-example terms
    g = grad_one(x_r[i], s_r[i:i + 1], labels[i:i + 1])
    sq.append(np.sum(np.asarray(g, np.float64) ** 2))
  want = np.mean(_softplus64(-lr)) + np.mean(_softplus64(lf)) + 0.3 / 2 * np.mean(sq)
  assert np.mean(sq) > 0
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["d_accuracy"]),
                             0.5 * (np.mean(lr > 0) + np.mean(lf < 0)))


def _batch(exp):
  images, labels = build.open_source(exp.data).get(np.arange(16))
  return {"image": jnp.asarray(images, jnp.float32), "label": jnp.asarray(labels)}


def _diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                           jax.tree.leaves(b)))


@pytest.mark.slow
def test_one_step_changes_both_networks_and_weight_zero_is_plain():
  exp = _exp()
  optimizer = families.make_optimizer(exp)
  graphdef, params = families.make_network(exp)
  state = families.train_state(exp, params, optimizer)
  cfg = families.step_config(exp, graphdef, optimizer)
  batch = _batch(exp)
  step = families.compile_step(exp, cfg)
  # two steps: the denoiser's lr ramp-up gives step 0 a zero lr (lr · images_seen / rampup)
  new, metrics = step(*step(state, batch)[:1], batch)
  for name in ("loss", "d_loss", "grad_norm"):
    assert np.isfinite(float(metrics[name])), name
  assert bool(metrics["grads_finite"])
  assert int(new.step) == 2
  assert _diff(new.params, state.params) > 0                 # the denoiser moved
  assert _diff(new.aux["params"], state.aux["params"]) > 0   # and the discriminator
  chex.assert_trees_all_equal_shapes_and_dtypes(new.aux, state.aux)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new.aux["params"]))

  # λ = 0: the denoiser's step is the plain family's (same keys); the discriminator is idle.
  exp0 = _exp("--config.adversarial.weight=0")
  cfg0 = families.step_config(exp0, graphdef, optimizer)
  state0 = families.train_state(exp0, params, optimizer)
  zero_step = jax.jit(lambda s, b: train_step(cfg0, adv.loss(exp0), s, b)[0])
  plain_step = jax.jit(lambda s, b: train_step(cfg0, denoising_loss, s, b)[0])
  zero = zero_step(zero_step(state0, batch), batch)
  plain = plain_step(plain_step(state0, batch), batch)
  assert _diff(plain.params, state0.params) > 0
  chex.assert_trees_all_close(zero.params, plain.params, atol=1e-7, rtol=0)
  chex.assert_trees_all_close(zero.ema, plain.ema, atol=1e-7, rtol=0)
  chex.assert_trees_all_equal(zero.aux, state0.aux)   # the control skips the D step
  # and λ > 0 takes another step than the plain one
  assert _diff(new.params, plain.params) > 1e-6


def _tree_files(d):
  out = {}
  for root, _, files in os.walk(d):
    for f in files:
      p = os.path.join(root, f)
      out[p] = os.stat(p).st_mtime_ns
  return out


@pytest.mark.slow
def test_finetuned_workdir_loads_samples_resumes_and_bad_inputs_are_refused(tmp_path, capsys):
  import jaxdiff
  base, ft = str(tmp_path / "base"), str(tmp_path / "ft")
  train(load_config(DIGITS, TINY + ["--config.training.steps=2"]), base)
  def cfg(*extra):
    return load_config(ADV, TINY + ATINY + [f"--config.adversarial.init={base}", *extra])
  summary = train(cfg("--config.training.steps=2"), ft)
  assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
  # the fine-tuned workdir is an ordinary one: its EMA starts from the base's and moved
  model, source = jaxdiff.load(ft), jaxdiff.load(base)
  assert model.exp.family == "adversarial"
  assert 0 < _diff(model.params, source.params) < 1.0
  images = model.sample(4, seed=0)
  chex.assert_shape(images, (4, 8, 8, 1))
  assert np.all(np.isfinite(np.asarray(images, np.float32)))
  # resumes with the discriminator restored (aux in the checkpoint)
  assert train(cfg("--config.training.steps=3"), ft)["start_step"] == 2

  before = _tree_files(ft)
  fresh = str(tmp_path / "fresh")
  for workdir, bad, msg in (
      (ft, "--config.data.num_classes=0", "with 10 classes, this config's data are 8x8x1 with 0"),
      (fresh, "--config.model.model_channels=16", "other parameter shapes")):
    code, _, err = run_main(capsys, "train", "--config", ADV, "--workdir", workdir, *(TINY + ATINY),
                            f"--config.adversarial.init={base}", bad)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert msg in lines[-1] and len(lines) == 1, err
  assert _tree_files(ft) == before        # nothing written over
  assert not os.path.exists(fresh)        # nothing created


def test_checkpoints_without_aux_keep_their_layout_and_with_aux_restore_it(tmp_path):
  """TrainState.aux = None is saved as the tree checkpoints had before aux existed (an older
  checkpoint, written here as that plain dict, restores); a state with aux restores its aux."""
  import optax
  import orbax.checkpoint as ocp

  from jaxdiff.train import checkpoint as ckpt_lib
  from jaxdiff.train.state import init_state
  opt = optax.adam(1e-3)
  state = init_state({"w": jnp.arange(3.0)}, opt, seed=0)
  old = {k: getattr(state, k) for k in ("step", "params", "ema", "opt_state", "rng", "extra_emas")}
  mngr = ckpt_lib.manager(str(tmp_path / "old"), async_save=False)
  mngr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(old),
                                       meta=ocp.args.JsonSave({"step": 1})))
  mngr.wait_until_finished()
  mngr.close()
  mngr = ckpt_lib.manager(str(tmp_path / "old"), async_save=False)  # read as a later run reads it
  abstract = jax.eval_shape(lambda: state)
  restored, _ = ckpt_lib.restore(mngr, abstract)
  assert restored.aux is None
  chex.assert_trees_all_equal(restored.params, state.params)
  mngr.close()

  with_aux = state.replace(aux={"params": {"v": jnp.full((2,), 7.0)}, "n": jnp.int32(3)})
  mngr = ckpt_lib.manager(str(tmp_path / "new"), async_save=False)
  ckpt_lib.save(mngr, 2, with_aux, {"step": 2})
  mngr.wait_until_finished()
  back, _ = ckpt_lib.restore(mngr, jax.eval_shape(lambda: with_aux))
  chex.assert_trees_all_equal(back.aux, with_aux.aux)
  # and aux = None writes no aux entry: the old layout exactly
  ckpt_lib.save(mngr, 3, state, {"step": 3})
  mngr.wait_until_finished()
  def meta(step):
    with open(os.path.join(str(tmp_path / "new"), "checkpoints", str(step), "state",
                           "_METADATA")) as f:
      return f.read()
  assert '"aux"' in meta(2) and '"aux"' not in meta(3)
  mngr.close()
