"""The student family (jaxdiff/families/student.py): the mixed distillation loss against NumPy, the
parameter-ratio refusal, and a few steps on a tiny teacher reduce the distillation loss."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DIGITS, ROOT, TINY, run_main

STUDENT = os.path.join(ROOT, "configs", "digits_student.py")
# TINY's student (8 channels, 11,993 parameters) and a teacher 20 channels wide (72,221).
TEACHER_ARGS = [*TINY, "--config.model.model_channels=20"]


def write_teacher(workdir) -> str:
  """A teacher workdir with random, non-zero weights (its output layer too, so D_t is not the
  untrained c_skip·x a zero-initialised student starts at): config.json and one checkpoint, as
  `jaxdiff train` writes them."""
  import zlib

  from jaxdiff import build, families
  from jaxdiff.config import load_config, to_json
  from jaxdiff.nets.layers import standard_normal
  from jaxdiff.train import checkpoint as ckpt_lib
  cfg = load_config(DIGITS, TEACHER_ARGS)
  exp = build.experiment(cfg)
  _, params = families.make_network(exp, 0)

  def randomize(path, leaf):
    k = jax.random.fold_in(jax.random.PRNGKey(1), zlib.crc32(jax.tree_util.keystr(path).encode()))
    if leaf.ndim < 2:
      return leaf
    # Host-side arithmetic on a shared-program draw: no compilation per leaf shape.
    return jax.device_put(np.asarray(leaf) + np.float32(0.05) * standard_normal(k, leaf.shape))
  params = jax.tree_util.tree_map_with_path(randomize, params)
  ckpt_lib.ensure_writable(str(workdir))
  ckpt_lib.check_or_write_config(str(workdir), to_json(cfg))
  ckpt_lib.save_only(str(workdir), 0, families.train_state(exp, params), {"step": 0})
  return str(workdir)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  return write_teacher(tmp_path_factory.mktemp("teacher") / "t")


def _student_exp(teacher, *extra):
  from jaxdiff import build
  from jaxdiff.config import load_config
  return build.experiment(load_config(STUDENT, [*TINY, "--config.model.attn_resolutions=()",
                                                f"--config.student.teacher={teacher}", *extra]))


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0])
def test_loss_matches_numpy(w):
  """Linear denoisers D_s = a·x + b, D_t = c·x on a [3, 2, 2, 1] batch: the loss from the same σ and
  noise draws, in float64: λ(σ)·[w·mean((D_s − D_t)²) + (1 − w)·mean((D_s − y)²)]."""
  from jaxdiff.families.student import distillation_loss
  from jaxdiff.losses import EDMLoss
  loss = EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
  y = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 2, 2, 1)), jnp.float32)
  key = jax.random.PRNGKey(7)
  student = lambda x, sigma: 0.8 * x + 0.1  # noqa: E731
  teacher = lambda x, sigma: 0.5 * x  # noqa: E731
  got = distillation_loss(loss, student, teacher, key, y, w)
  chex.assert_shape(got, (3,))
  chex.assert_type(got, jnp.float32)
  ks, kn = jax.random.split(key)
  sigma = np.exp(np.asarray(jax.random.normal(ks, (3,)), np.float64) * 1.2 - 1.2)
  n = np.asarray(jax.random.normal(kn, y.shape), np.float64)
  y64 = np.asarray(y, np.float64)
  x = y64 + n * sigma[:, None, None, None]
  ds, dt = 0.8 * x + 0.1, 0.5 * x
  lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
  want = lam * (w * ((ds - dt) ** 2).mean((1, 2, 3)) + (1 - w) * ((ds - y64) ** 2).mean((1, 2, 3)))
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5)


def test_no_distillation_is_the_denoising_loss_and_the_teacher_is_frozen():
  from jaxdiff import losses
  from jaxdiff.families.student import distillation_loss
  loss = losses.EDMLoss()
  y = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 2, 2, 1)), jnp.float32)
  key = jax.random.PRNGKey(3)
  den = lambda x, sigma: 0.9 * x  # noqa: E731
  np.testing.assert_array_equal(np.asarray(distillation_loss(loss, den, den, key, y, 0.0)),
                                np.asarray(losses.denoising_loss(loss, den, key, y)))

  def total(a, c):  # gradient reaches the student's parameter a, never the teacher's c
    return jnp.sum(distillation_loss(loss, lambda x, s: a * x, lambda x, s: c * x, key, y, 0.5))
  ga, gc = jax.grad(total, argnums=(0, 1))(0.7, 0.4)
  assert float(ga) != 0.0 and float(gc) == 0.0


def test_spec_refusals(tmp_path):
  from jaxdiff import build
  from jaxdiff.config import load_config
  from jaxdiff.errors import JaxdiffError
  with pytest.raises(JaxdiffError, match="set --config.student.teacher=DIR"):
    build.experiment(load_config(STUDENT, TINY))
  with pytest.raises(JaxdiffError, match=r"distill_weight=1.5 must be in \[0, 1\]"):
    build.experiment(load_config(STUDENT, [*TINY, "--config.student.teacher=x",
                                           "--config.student.distill_weight=1.5"]))


def test_student_larger_than_a_quarter_refused(teacher, tmp_path, capsys):
  """16 channels (46,513 parameters) against the 20-channel teacher's 72,221: one line naming both
  counts, exit 2, no workdir written."""
  out = tmp_path / "s"
  code, _, err = run_main(capsys, "train", "--config", STUDENT, "--workdir", str(out), *TINY,
                          "--config.model.model_channels=16",
                          f"--config.student.teacher={teacher}")
  assert code == 2, err
  assert len(err.strip().splitlines()) == 1, err
  assert "46,513 parameters, more than 1/4 of the teacher's 72,221" in err, err
  assert not out.exists()


@pytest.mark.slow
def test_few_steps_reduce_the_distillation_loss(teacher):
  """20 steps on one fixed digits batch with w = 1 (pure distillation): the distillation loss at
  fixed σ / noise (eval mode) falls."""
  from jaxdiff import families
  from jaxdiff.data.digits import load_digits_source
  from jaxdiff.denoiser import make_denoiser
  from jaxdiff.families import student as student_lib
  exp = _student_exp(teacher, "--config.student.distill_weight=1.0", "--config.model.dropout=0",
                     "--config.training.lr=0.01", "--config.training.lr_rampup_images=0")
  assert exp.family == "student"
  families.check_inputs(exp)  # 11,993 <= 72,221 / 4
  t = student_lib.teacher_model(exp)
  graphdef, params = families.initial_params(exp, 0)
  optimizer = families.make_optimizer(exp)
  state = families.train_state(exp, params, optimizer)
  step = families.compile_step(exp, families.step_config(exp, graphdef, optimizer))
  src = load_digits_source()
  batch = dict(image=jnp.asarray(src.images[:16]), label=jnp.asarray(src.labels[:16]))
  labels = jax.nn.one_hot(batch["label"], exp.label_dim)
  teacher_den = make_denoiser(t.graphdef, t.params, t.precond)

  @jax.jit
  def distill(params):
    student = make_denoiser(graphdef, params, exp.precond)
    return jnp.mean(student_lib.distillation_loss(
        exp.loss, student, teacher_den, jax.random.PRNGKey(5), batch["image"], 1.0,
        class_labels=labels))
  before = float(distill(state.params))
  for _ in range(20):
    state, metrics = step(state, batch)
  after = float(distill(state.params))
  assert np.isfinite(float(metrics["loss"]))
  assert after < 0.7 * before, (before, after)


@pytest.mark.slow
def test_student_is_an_ordinary_workdir(teacher, tmp_path, capsys):
  import jaxdiff
  out = tmp_path / "s"
  code, _, err = run_main(capsys, "train", "--config", STUDENT, "--workdir", str(out), *TINY,
                          "--config.training.steps=2", f"--config.student.teacher={teacher}")
  assert code == 0, err
  model = jaxdiff.load(str(out))
  assert model.exp.family == "student" and model.exp.family_spec.teacher == teacher
  images = model.sample(2, seed=0)
  chex.assert_shape(images, (2, *model.shape))
  chex.assert_type(images, np.uint8)
