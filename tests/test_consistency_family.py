"""The consistency family: config selection, the iCT / distillation losses as the skeleton runs
them (curriculum from state.step, stop-gradient teacher branch, the teacher's Heun step), tuning's
start from an EDM workdir, and exact resumption."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from conftest import DIGITS, ROOT, TINY
from jaxdiff import build, families
from jaxdiff.build import run_training as train
from jaxdiff.config import load_config
from jaxdiff.consistency import ICT, ConsistencyPrecond
from jaxdiff.denoiser import make_denoiser
from jaxdiff.errors import JaxdiffError
from jaxdiff.families import consistency as cm
from jaxdiff.train import checkpoint as ckpt_lib

CONSISTENCY = os.path.join(ROOT, "configs", "digits_consistency.py")
SMALL = ["--config.consistency.s0=2", "--config.consistency.s1=8"]
CT = TINY + SMALL


def _cfg(*extra):
  return load_config(CONSISTENCY, CT + list(extra))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  w = tmp_path_factory.mktemp("cm") / "teacher"
  train(load_config(DIGITS, TINY + ["--config.training.steps=2"]), str(w))
  return str(w)


@pytest.fixture(scope="module")
def ct_workdir(tmp_path_factory):
  w = tmp_path_factory.mktemp("cm") / "ct"
  train(_cfg("--config.training.steps=4"), str(w))
  return str(w)


def _batch(n=4):
  images, labels = build.make_source(load_config(DIGITS, TINY)).get(np.arange(n))
  return jnp.asarray(images, jnp.float32), jax.nn.one_hot(jnp.asarray(labels), 10)


def test_section_selects_the_family_and_its_preconditioning():
  exp = build.experiment(_cfg("--config.precond.sigma_data=0.6", "--config.consistency.sigma_min=0.003"))
  assert exp.family == "consistency"
  assert exp.precond == ConsistencyPrecond(sigma_data=0.6, sigma_min=0.003, sigma_max=80.0)
  assert exp.family_spec.ict == ICT(sigma_min=0.003, s0=2, s1=8)
  assert exp.sampling.sigma_min == 0.003  # the sampler never goes below the boundary
  # The same network without the section stays a plain EDM model.
  plain = build.experiment(load_config(DIGITS, TINY))
  assert plain.family == "plain" and type(plain.precond).__name__ == "EDMPrecond"


@pytest.mark.parametrize("override, match", [
    ("--config.consistency.mode=fast", "choose one of ct, tune, distill"),
    ("--config.consistency.mode=tune", "init_from"),
    ("--config.consistency.mode=distill", "teacher"),
    ("--config.consistency.teacher=/x", "trains from scratch"),
    ("--config.consistency.s0=0", "s0"),
    ("--config.consistency.sample_sigmas=(1.0,2.0)", "must decrease"),
])
def test_bad_sections_are_one_line_errors(override, match):
  with pytest.raises(JaxdiffError, match=match):
    build.experiment(_cfg(override))


@pytest.mark.slow
def test_ct_loss_uses_the_curriculum_and_a_stop_gradient_teacher():
  exp = build.experiment(_cfg("--config.training.steps=12", "--config.model.dropout=0.0"))
  optimizer = families.make_optimizer(exp)
  graphdef, params = families.make_network(exp)
  cfg = families.step_config(exp, graphdef, optimizer)
  state = families.train_state(exp, params, optimizer)
  images, labels = _batch()
  key = jax.random.PRNGKey(5)
  ict = exp.family_spec.ict
  # K' = ⌊12/(log2⌊8/2⌋ + 1)⌋ = 4: N = 2·2^⌊k/4⌋ + 1, capped at s1 + 1 = 9.
  for k, want in ((0, 3), (3, 3), (4, 5), (8, 9), (11, 9)):
    parts = cm.ct_family_loss(exp.family_spec, 12)(cfg, state.replace(step=jnp.int32(k)), key,
                                                   images, labels, None)
    assert int(parts.metrics["num_scales"]) == want
  loss, grads = jax.value_and_grad(parts.loss_fn)(state.params, 0, images, labels, None)

  # Independently: the same draws (z, i from the loss key), the target a constant.
  loss_key, _ = jax.random.split(key)
  kz, ki = jax.random.split(loss_key)
  z = jax.random.normal(kz, images.shape)
  i = ict.sample_index(ki, (4,), 9)
  s = np.asarray(ict.sigmas(9), np.float32)
  s_hi, s_lo = s[np.asarray(i) + 1], s[np.asarray(i)]
  lam = 1 / (s_hi.astype(np.float64) - s_lo)
  c = 0.00054 * np.sqrt(64)

  def f(p, x, sigma):
    return make_denoiser(graphdef, p, exp.precond)(x, sigma, class_labels=labels)
  target = f(state.params, images + s_lo[:, None, None, None] * z, s_lo)

  def manual(p):
    d = (f(p, images + s_hi[:, None, None, None] * z, s_hi) - target).reshape(4, -1)
    return jnp.mean(lam * (jnp.sqrt(jnp.sum(d**2, -1) + c**2) - c))
  want_loss, want_grads = jax.value_and_grad(manual)(state.params)
  np.testing.assert_allclose(loss, want_loss, rtol=2e-5)
  chex.assert_trees_all_close(grads, want_grads, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_one_consistency_model_resumes_exactly(ct_workdir, tmp_path):
  half = str(tmp_path / "half")
  train(_cfg("--config.training.steps=2"), half)
  summary = train(_cfg("--config.training.steps=4"), half)
  assert summary["start_step"] == 2 and summary["steps"] == 4
  exp = build.workdir_experiment(ct_workdir)
  _, abstract = families.abstract_state(exp)
  states = []
  for w in (ct_workdir, half):
    mngr = ckpt_lib.manager(w, async_save=False)
    states.append(ckpt_lib.restore(mngr, abstract)[0])
    mngr.close()
  assert int(states[0].step) == int(states[1].step) == 4
  chex.assert_trees_all_equal(states[0].params, states[1].params)
  chex.assert_trees_all_equal(states[0].ema, states[1].ema)
  chex.assert_trees_all_equal(states[0].opt_state, states[1].opt_state)


def test_loaded_model_keeps_the_boundary_exactly(ct_workdir):
  model = jaxdiff.load(ct_workdir)
  assert isinstance(model.precond, ConsistencyPrecond)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1)))
  np.testing.assert_array_equal(model.denoise(x, np.full(3, 0.002), labels=[0, 1, 2]), x)


def test_a_plain_config_on_a_consistency_workdir_is_refused(ct_workdir):
  with pytest.raises(JaxdiffError, match="consistency.mode"):
    train(load_config(DIGITS, TINY), ct_workdir)


def test_tuning_starts_from_the_teachers_ema(teacher):
  exp = build.experiment(_cfg("--config.consistency.mode=tune",
                              f"--config.consistency.init_from={teacher}"))
  _, params = families.initial_params(exp, seed=3)
  chex.assert_trees_all_equal(params, jaxdiff.load(teacher).params)
  fresh = build.experiment(_cfg())
  _, p0 = families.initial_params(fresh, seed=3)
  chex.assert_trees_all_equal(p0, families.make_network(fresh, seed=3)[1])
  with pytest.raises(JaxdiffError, match="init_from"):
    other = build.experiment(_cfg("--config.consistency.mode=tune",
                                  f"--config.consistency.init_from={teacher}",
                                  "--config.model.model_channels=16"))
    families.initial_params(other)


@pytest.mark.slow
def test_distillation_target_is_one_heun_step_of_the_teacher(teacher):
  exp = build.experiment(_cfg("--config.consistency.mode=distill",
                              f"--config.consistency.teacher={teacher}",
                              "--config.model.dropout=0.0"))
  assert exp.family_spec.init_from == teacher  # the student starts from the teacher
  optimizer = families.make_optimizer(exp)
  graphdef, params = families.initial_params(exp)
  cfg = families.step_config(exp, graphdef, optimizer)
  state = families.train_state(exp, params, optimizer)
  images, labels = _batch()
  key = jax.random.PRNGKey(2)
  parts = cm.loss(exp)(cfg, state, key, images, labels, None)
  loss = parts.loss_fn(state.params, 0, images, labels, None)
  N = int(parts.metrics["num_scales"])

  # Independently: the teacher as a user loads it, one Heun step written out in float64.
  t_model = jaxdiff.load(teacher)
  lab = np.asarray(np.argmax(labels, -1))
  D = lambda x, s: np.asarray(t_model.denoise(np.float32(x), np.float32(s), labels=lab), np.float64)
  ict = exp.family_spec.ict
  loss_key, _ = jax.random.split(key)
  kz, ki = jax.random.split(loss_key)
  z = np.asarray(jax.random.normal(kz, images.shape), np.float64)
  i = np.asarray(ict.sample_index(ki, (4,), N))
  s = ict.sigmas(N)
  b = (4, 1, 1, 1)
  s_hi, s_lo = s[i + 1].reshape(b), s[i].reshape(b)
  x_hi = np.asarray(images, np.float64) + s_hi * z
  d = (x_hi - D(x_hi, s_hi.ravel())) / s_hi
  x_e = x_hi + (s_lo - s_hi) * d
  x_hat = x_hi + (s_lo - s_hi) * 0.5 * (d + (x_e - D(x_e, s_lo.ravel())) / s_lo)
  student = jaxdiff.model.Model(exp, graphdef, state.params)
  f = lambda x, s: np.asarray(student.denoise(np.float32(x), np.float32(s), labels=lab), np.float64)
  diff = (f(x_hi, s_hi.ravel()) - f(x_hat, s_lo.ravel())).reshape(4, -1)
  c = 0.00054 * 8
  want = np.mean((np.sqrt((diff**2).sum(-1) + c**2) - c) / (s[i + 1] - s[i]))
  np.testing.assert_allclose(float(loss), want, rtol=2e-3)


@pytest.mark.slow
def test_distillation_trains_through_the_loop(teacher, tmp_path):
  w = str(tmp_path / "cd")
  summary = train(_cfg("--config.consistency.mode=distill", f"--config.consistency.teacher={teacher}",
                       "--config.training.steps=2"), w)
  assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
  assert jaxdiff.load(w).exp.family_spec.mode == "distill"


def test_sampler_grid_of_a_consistency_model():
  from jaxdiff.model import sampler_sigmas
  exp = build.experiment(_cfg())
  np.testing.assert_array_equal(sampler_sigmas(exp, "consistency", 2), [80.0, 0.821, 0.0])
  assert sampler_sigmas(exp, "consistency", 3) is None  # the sampler's own Karras levels
  np.testing.assert_array_equal(sampler_sigmas(exp, "consistency", 3, [80, 4, 1]), [80, 4, 1, 0])
  with pytest.raises(JaxdiffError, match="3 steps need 4"):
    sampler_sigmas(exp, "consistency", 3, [80, 4])
  plain = build.experiment(load_config(DIGITS, TINY))
  with pytest.raises(JaxdiffError, match="needs a consistency model"):
    sampler_sigmas(plain, "consistency", 1)
  assert sampler_sigmas(plain, "heun", 3) is None
