"""The student family: a lightweight network distilled from a trained teacher (issue 14).

Selected by a `student` section (whatever the arch). The student is an ordinary network of the
same data (resolution, channels, classes) with at most a quarter of the teacher's parameters; it
trains with the skeleton (train.step.train_step) on

  loss(y) = λ(σ) · [w · mean((D_s(x; σ) − D_t(x; σ))²) + (1 − w) · mean((D_s(x; σ) − y)²)],

x = y + σn, σ ~ p(σ) and λ(σ) of the config's loss (EDM: ln σ ~ N(P_mean, P_std²),
λ = (σ² + σ_d²)/(σσ_d)²), D_t the teacher's EMA denoiser in eval mode under stop-gradient
(frozen), w = `student.distill_weight`. Both terms share σ and n; w = 0 is the ordinary denoising
loss (losses.denoising_loss) bit for bit. The result is an ordinary workdir: `jaxdiff sample`,
`eval` and `jaxdiff.load` never look at the teacher again.

Config: student.teacher = DIR (a trained workdir), student.distill_weight (default 0.5).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.denoiser import make_denoiser
from jaxdiff.errors import JaxdiffError
from jaxdiff.families import Family, frozen_argument_compile_step
from jaxdiff.families.plain import make_optimizer
from jaxdiff.train.step import StepParts

_KEYS = ("teacher", "distill_weight")
MAX_RATIO = 0.25  # the student's parameters over the teacher's, at most


@dataclasses.dataclass(frozen=True)
class StudentSpec:
  teacher: str                 # the teacher's workdir (its EMA weights)
  distill_weight: float = 0.5  # w: the distillation term's share of the loss


def make_spec(network, loss, batch_size, section: dict) -> StudentSpec:
  unknown = sorted(set(section) - set(_KEYS))
  if unknown:
    raise JaxdiffError(f"student has key(s) {unknown}; its options are {sorted(_KEYS)}")
  teacher = section.get("teacher") or None
  if not teacher:
    raise JaxdiffError("a student needs a trained teacher; set --config.student.teacher=DIR")
  w = float(section.get("distill_weight", 0.5))
  if not 0.0 <= w <= 1.0:
    raise JaxdiffError(f"student.distill_weight={w} must be in [0, 1]")
  if network.arch in ("multistage", "edm2"):
    raise JaxdiffError(f"a student is a plain EDM network; model.arch={network.arch!r} is not "
                       "supported")
  from jaxdiff.edm2_loss import EDM2Loss
  if isinstance(loss, EDM2Loss):
    raise JaxdiffError("a student trains with an EDM-style loss (loss.name edm, vp or ve)")
  return StudentSpec(teacher=str(teacher), distill_weight=w)


# ---------------------------------------------------------------- the loss
def distillation_loss(loss, student, teacher, key, y, distill_weight: float, **cond):
  """Per-example loss [B] (float32): λ(σ)·[w·mean((D_s − sg(D_t))²) + (1 − w)·mean((D_s − y)²)]
  at x = y + σn, σ ~ loss.sample_sigma. `student` / `teacher`: denoise(x, sigma[B], **cond). The
  key is split as losses.denoising_loss splits it (σ, then n)."""
  y = jnp.asarray(y, jnp.float32)
  key_sigma, key_noise = jax.random.split(key)
  sigma = jnp.asarray(loss.sample_sigma(key_sigma, (y.shape[0],)), jnp.float32)
  bcast = (y.shape[0],) + (1,) * (y.ndim - 1)
  x = y + jax.random.normal(key_noise, y.shape, jnp.float32) * sigma.reshape(bcast)
  d_s = jnp.asarray(student(x, sigma, **cond), jnp.float32)
  axes = tuple(range(1, y.ndim))
  per = (1.0 - distill_weight) * jnp.mean((d_s - y) ** 2, axis=axes)
  if distill_weight:
    d_t = jax.lax.stop_gradient(jnp.asarray(teacher(x, sigma, **cond), jnp.float32))
    per = per + distill_weight * jnp.mean((d_s - d_t) ** 2, axis=axes)
  return loss.weight(sigma) * per


def student_family_loss(spec: StudentSpec, teacher_graphdef, teacher_precond, teacher_params):
  """The family loss (train.step.train_step): mean distillation_loss, the student in training
  mode (dropout), the teacher in eval mode. Keys as the plain family's."""
  def family_loss(cfg, state, key, images, class_labels, aug_labels) -> StepParts:
    n = cfg.grad_accum

    def loss_fn(params, m, images, class_labels, aug_labels):
      loss_key, dropout_key = jax.random.split(key if n == 1 else jax.random.fold_in(key, m))
      cond = dict(class_labels=class_labels)
      if aug_labels is not None:
        cond["augment_labels"] = aug_labels
      student = make_denoiser(cfg.graphdef, params, cfg.precond, train=True,
                              dropout_key=dropout_key)
      teacher_den = make_denoiser(teacher_graphdef, teacher_params, teacher_precond)
      # The teacher was trained without augmentation labels of this run: class labels only.
      teacher = lambda x, sigma, class_labels=None, **_: teacher_den(  # noqa: E731
          x, sigma, class_labels=class_labels)
      return jnp.mean(distillation_loss(cfg.loss, student, teacher, loss_key, images,
                                        spec.distill_weight, **cond))
    return StepParts(loss_fn, (images, class_labels, aug_labels))
  return family_loss


# ---------------------------------------------------------------- the teacher
def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def teacher_model(exp):
  """The teacher (jaxdiff.model.Model of student.teacher: EMA weights, its own preconditioning),
  checked against the student: same data, a diffusion model."""
  spec = exp.family_spec
  from jaxdiff.model import load
  try:
    teacher = load(spec.teacher)
  except JaxdiffError as e:
    raise JaxdiffError(f"student.teacher={spec.teacher!r}: {e}") from None
  a, b = exp.network, teacher.exp.network
  mine = (a.img_resolution, a.img_channels, a.label_dim)
  theirs = (b.img_resolution, b.img_channels, b.label_dim)
  if mine != theirs:
    raise JaxdiffError(f"student.teacher={spec.teacher!r} models (resolution, channels, classes) "
                       f"= {theirs}, this config {mine}; use the teacher's data")
  if teacher.exp.family == "consistency":
    raise JaxdiffError(f"student.teacher={spec.teacher!r} is a consistency model; distil from a "
                       "diffusion (EDM) workdir")
  return teacher


def parameter_counts(exp, teacher) -> tuple[int, int]:
  """(student, teacher) parameter counts (the teacher's float network, even when quantized)."""
  from jaxdiff import families
  student = count_params(families.abstract_network(exp)[1])
  return student, count_params(families.abstract_network(teacher.exp)[1])


def check_inputs(exp) -> None:
  """Before `jaxdiff train` writes anything: the teacher loads, fits, and is >= 4x larger."""
  teacher = teacher_model(exp)
  n_student, n_teacher = parameter_counts(exp, teacher)
  if n_student > MAX_RATIO * n_teacher:
    raise JaxdiffError(f"the student has {n_student:,} parameters, more than 1/4 of the teacher's "
                       f"{n_teacher:,} ({exp.family_spec.teacher}); make the student's network "
                       "smaller (e.g. model.model_channels)")


def info(exp) -> dict:
  teacher = teacher_model(exp)
  n_student, n_teacher = parameter_counts(exp, teacher)
  return dict(teacher=exp.family_spec.teacher, teacher_params=n_teacher,
              param_ratio=n_student / n_teacher)


def loss(exp):
  t = teacher_model(exp)
  return student_family_loss(exp.family_spec, t.graphdef, t.precond, t.params)


def compile_step(step_cfg, exp, **jit_kwargs):
  """The skeleton as one jit, with the teacher's frozen weights a third argument (replicated on
  the batch's mesh) rather than constants folded into the program."""
  t = teacher_model(exp)
  return frozen_argument_compile_step(
      lambda tp: student_family_loss(exp.family_spec, t.graphdef, t.precond, tp), t.params,
      step_cfg, **jit_kwargs)


FAMILY = Family(name="student", loss=loss, make_optimizer=make_optimizer, make_spec=make_spec,
                compile_step=compile_step, selected_by_section=True, check_inputs=check_inputs,
                info=info)
