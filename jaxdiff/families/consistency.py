"""The consistency family: any network as a consistency function f(x, σ) (jaxdiff.consistency).

Selected by a `consistency` section in the config (whatever the arch); its `mode` says how f is
trained, always with the skeleton's shared update tail (train.step.train_step):

- "ct": consistency training in the iCT recipe (Song & Dhariwal 2024): pseudo-Huber metric,
  log-normal index law over the discretisation, the doubling curriculum N(step) over
  training.steps, and the teacher branch the same parameters under stop-gradient (no EMA teacher).
- "tune": the same loss, started from the EMA weights of a trained EDM workdir
  (`consistency.init_from=DIR`), as "Consistency Models Made Easy" (ECT) starts from a diffusion
  model; ECT's own Δt schedule is not implemented (the iCT curriculum is used).
- "distill": consistency distillation from a trained EDM teacher (`consistency.teacher=DIR`, its
  EMA weights): the target is f under stop-gradient at one Heun step of the teacher's ODE
  (ICT.cd_target); the student starts from the teacher's weights unless `init_from` names others.

The model's preconditioning is `ConsistencyPrecond` (σ_data from `precond`, σ_min / σ_max from this
section), so f(x, σ_min) = x exactly; `jaxdiff.load` and `Model.sample` use it too, and
`sampling.sample(..., "consistency", K)` samples it. An EDM network's weights start it (same c_in,
c_noise; c_skip / c_out differ only near σ_min).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.consistency import ICT, ConsistencyPrecond
from jaxdiff.denoiser import make_denoiser
from jaxdiff.errors import JaxdiffError
from jaxdiff.families import Family, default_compile_step, frozen_argument_compile_step
from jaxdiff.families.plain import make_optimizer
from jaxdiff.train.step import StepParts

MODES = ("ct", "tune", "distill")
_ICT_KEYS = ("sigma_min", "sigma_max", "rho", "P_mean", "P_std", "s0", "s1")
_KEYS = ("mode", "init_from", "teacher", "huber_c", "sample_sigmas") + _ICT_KEYS


@dataclasses.dataclass(frozen=True)
class ConsistencySpec:
  mode: str                   # ct | tune | distill
  ict: ICT                    # discretisation, curriculum, index law, metric
  init_from: str | None = None    # workdir whose EMA weights start the run (tune; distill default)
  teacher: str | None = None      # distill: the EDM teacher's workdir
  sample_sigmas: tuple = ()   # noise levels τ_0 > … of multistep sampling when K = len(...)


def make_spec(network, loss, batch_size, section: dict) -> ConsistencySpec:
  unknown = sorted(set(section) - set(_KEYS))
  if unknown:
    raise JaxdiffError(f"consistency has key(s) {unknown}; its options are {sorted(_KEYS)}")
  mode = section.get("mode", "ct")
  if mode not in MODES:
    raise JaxdiffError(f"consistency.mode={mode!r}; choose one of {', '.join(MODES)}")
  if network.arch == "multistage":
    raise JaxdiffError("a consistency model needs a single network; model.arch='multistage' is "
                       "not supported")
  init_from = section.get("init_from") or None
  teacher = section.get("teacher") or None
  if mode == "tune" and not init_from:
    raise JaxdiffError("consistency.mode='tune' starts from a trained EDM workdir; set "
                       "consistency.init_from=DIR")
  if mode == "distill" and not teacher:
    raise JaxdiffError("consistency.mode='distill' needs a trained EDM teacher; set "
                       "consistency.teacher=DIR")
  if mode == "ct" and (init_from or teacher):
    raise JaxdiffError("consistency.mode='ct' trains from scratch; init_from / teacher belong to "
                       "mode 'tune' / 'distill'")
  if mode == "distill" and not init_from:
    init_from = teacher  # CD starts the student from the teacher (Song et al. 2023)
  ict_kw = {k: (int(v) if k in ("s0", "s1") else float(v))
            for k, v in section.items() if k in _ICT_KEYS and v is not None}
  huber_c = section.get("huber_c")
  ict = ICT(c=None if huber_c is None else float(huber_c), **ict_kw)
  taus = tuple(float(v) for v in (section.get("sample_sigmas") or ()))
  if taus and not (all(np.diff(taus) < 0) and taus[-1] > ict.sigma_min
                   and taus[0] <= ict.sigma_max):
    raise JaxdiffError(f"consistency.sample_sigmas={taus} must decrease within "
                       f"(sigma_min={ict.sigma_min}, sigma_max={ict.sigma_max}]")
  return ConsistencySpec(mode=mode, ict=ict, init_from=init_from, teacher=teacher,
                         sample_sigmas=taus)


def make_precond(precond, spec: ConsistencySpec) -> ConsistencyPrecond:
  if not hasattr(precond, "sigma_data"):
    raise JaxdiffError(f"a consistency model takes precond.name='edm' (for its sigma_data), got "
                       f"{type(precond).__name__}")
  return ConsistencyPrecond(sigma_data=float(precond.sigma_data), sigma_min=spec.ict.sigma_min,
                            sigma_max=spec.ict.sigma_max)


# ---------------------------------------------------------------- starting from a trained model
def _check_source(exp, src, what: str, workdir: str):
  a, b = exp.network, src.network
  mine = (a.arch, a.img_resolution, a.img_channels, a.label_dim)
  theirs = (b.arch, b.img_resolution, b.img_channels, b.label_dim)
  if mine != theirs:
    raise JaxdiffError(f"{what}={workdir!r} is a model of (arch, resolution, channels, classes) = "
                       f"{theirs}, this config's is {mine}; use the same model section")


def init_params(exp, params):
  """The EMA weights of `init_from` (tune, distill) in place of the fresh ones (ct)."""
  spec = exp.family_spec
  if not spec.init_from:
    return params
  from jaxdiff.model import load  # the workdir's own config and weights (no optimizer)
  try:
    source = load(spec.init_from)
  except JaxdiffError as e:
    raise JaxdiffError(f"consistency.init_from={spec.init_from!r}: {e}") from None
  _check_source(exp, source.exp, "consistency.init_from", spec.init_from)
  shapes = lambda tree: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)  # noqa: E731
  if (jax.tree.structure(source.params) != jax.tree.structure(params)
      or shapes(source.params) != shapes(params)):
    raise JaxdiffError(f"consistency.init_from={spec.init_from!r} holds a network of other "
                       "parameter shapes than this config's; use the same model section")
  return source.params


def teacher_model(exp):
  """The distillation teacher (a jaxdiff.model.Model: EMA weights, its own preconditioning)."""
  spec = exp.family_spec
  from jaxdiff.model import load
  teacher = load(spec.teacher)
  _check_source(exp, teacher.exp, "consistency.teacher", spec.teacher)
  if teacher.exp.family == "consistency":
    raise JaxdiffError(f"consistency.teacher={spec.teacher!r} is a consistency model; distill "
                       "from a diffusion (EDM) workdir")
  return teacher


# ---------------------------------------------------------------- the losses
def consistency_fn(cfg, params, class_labels, aug_labels):
  """f_θ(x, σ, rng) in training mode (dropout from rng) for the ICT losses."""
  cond = dict(class_labels=class_labels)
  if aug_labels is not None:
    cond["augment_labels"] = aug_labels

  def f(x, sigma, rng):
    return make_denoiser(cfg.graphdef, params, cfg.precond, train=True, dropout_key=rng)(
        x, sigma, **cond)
  return f


def _keys(key, n, m):
  # As the plain family: one micro-batch uses the step key itself, several one folded key each.
  return jax.random.split(key if n == 1 else jax.random.fold_in(key, m))


def ct_family_loss(spec: ConsistencySpec, total_steps: int):
  """The family loss (train.step.train_step) of iCT: mean ICT.ct_loss at N = num_scales(step)."""
  def family_loss(cfg, state, key, images, class_labels, aug_labels) -> StepParts:
    N = spec.ict.num_scales(state.step, total_steps)

    def loss_fn(params, m, images, class_labels, aug_labels):
      loss_key, dropout_key = _keys(key, cfg.grad_accum, m)
      f = consistency_fn(cfg, params, class_labels, aug_labels)
      return jnp.mean(spec.ict.ct_loss(f, images, loss_key, N, rng=dropout_key))
    return StepParts(loss_fn, (images, class_labels, aug_labels), metrics=dict(num_scales=N))
  return family_loss


def cd_family_loss(spec: ConsistencySpec, total_steps: int, teacher_graphdef, teacher_precond,
                   teacher_params):
  """The family loss of consistency distillation: mean ICT.cd_loss with the teacher's D (eval
  mode, EMA weights) and the stop-gradient student as the target function."""
  def family_loss(cfg, state, key, images, class_labels, aug_labels) -> StepParts:
    N = spec.ict.num_scales(state.step, total_steps)

    def loss_fn(params, m, images, class_labels, aug_labels):
      loss_key, dropout_key = _keys(key, cfg.grad_accum, m)
      f = consistency_fn(cfg, params, class_labels, aug_labels)
      den = make_denoiser(teacher_graphdef, teacher_params, teacher_precond)
      teacher = lambda x, sigma: den(x, sigma, class_labels=class_labels)  # noqa: E731
      return jnp.mean(spec.ict.cd_loss(f, teacher, images, loss_key, N, rng=dropout_key))
    return StepParts(loss_fn, (images, class_labels, aug_labels), metrics=dict(num_scales=N))
  return family_loss


def loss(exp):
  spec = exp.family_spec
  if spec.mode != "distill":
    return ct_family_loss(spec, exp.training.steps)
  t = teacher_model(exp)  # the teacher's weights as constants of the program (see compile_step)
  return cd_family_loss(spec, exp.training.steps, t.graphdef, t.precond, t.params)


def compile_step(step_cfg, exp, **jit_kwargs):
  """CT / tune: the skeleton as one jit. Distill: the teacher's weights are a third argument
  (replicated on the batch's mesh), not constants folded into the program."""
  spec = exp.family_spec
  if spec.mode != "distill":
    return default_compile_step(loss(exp), step_cfg, **jit_kwargs)
  t = teacher_model(exp)
  return frozen_argument_compile_step(
      lambda tp: cd_family_loss(spec, exp.training.steps, t.graphdef, t.precond, tp), t.params,
      step_cfg, **jit_kwargs)


FAMILY = Family(name="consistency", loss=loss, make_optimizer=make_optimizer,
                compile_step=compile_step, make_spec=make_spec, selected_by_section=True,
                make_precond=make_precond, init_params=init_params)
