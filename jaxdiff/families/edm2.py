"""The EDM2 family (Karras et al., CVPR 2024; NVlabs/edm2 training/training_loop.py): the
magnitude-preserving U-Net (model.arch = "edm2"), its loss with the learned uncertainty u(σ), Adam
with the inverse-square-root learning rate, forced weight normalisation, and power-function EMAs
with snapshots for post-hoc reconstruction (`jaxdiff phema`).

Config: loss.name = "edm2" (P_mean, P_std); training.lr is ref_lr and training.lr_rampup_images
the ramp-up, as for every config; the `edm2` section holds what only EDM2 has:
  ref_batches            the lr decays as 1/√(t / (ref_batches·batch)) after that many batches
  ema_stds               σ_rel of the power-function EMAs tracked (the first is state.ema, the
                         weights `jaxdiff sample` uses); default the reference's (0.050, 0.100)
  snapshot_every_images  write every EMA to workdir/phema/ every that many images (0: never)

One step, as the reference's: p = force_normalize(params) (every MPConv weight replaced by its
normalised copy); the loss and its gradient at p; grads NaN/±inf -> 0; new = p + Adam(grads);
each EMA ← lerp(EMA, new, 1 − β), β = (1 − batch/t)^(γ+1), t the images seen after the step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff import edm2_loss as L
from jaxdiff import phema
from jaxdiff.errors import JaxdiffError
from jaxdiff.families import Family
from jaxdiff.nets.edm2 import force_normalize
from jaxdiff.train.step import StepParts

# The reference's training_loop defaults (ref_batches 70e3; ema_std (0.050, 0.100)).
DEFAULT_STDS = (0.050, 0.100)


@dataclasses.dataclass(frozen=True)
class EDM2Spec:
  ref_batches: float = 70_000.0
  ema_stds: tuple = DEFAULT_STDS
  snapshot_every_images: int = 0


# Keys of other sections users may look for here.
_ELSEWHERE = {"P_mean": "loss.P_mean", "P_std": "loss.P_std", "ref_lr": "training.lr",
              "rampup_images": "training.lr_rampup_images", "lr": "training.lr"}


def make_spec(network, loss, batch_size: int, section: dict) -> EDM2Spec:
  """The `edm2` config section as an EDM2Spec, validated (one-line JaxdiffErrors)."""
  if not isinstance(loss, L.EDM2Loss):
    raise JaxdiffError("model.arch 'edm2' trains with the EDM2 loss and its uncertainty head; set "
                       "loss.name='edm2'")
  fields = {f.name for f in dataclasses.fields(EDM2Spec)}
  for key in section:
    if key in _ELSEWHERE:
      raise JaxdiffError(f"edm2.{key} is set as {_ELSEWHERE[key]}; move it there")
    if key not in fields:
      raise JaxdiffError(f"edm2 has no key {key!r}; its keys are {sorted(fields)}")
  stds = tuple(float(s) for s in section.get("ema_stds", DEFAULT_STDS))
  if not stds:
    raise JaxdiffError("edm2.ema_stds is empty; track at least one width, e.g. (0.05, 0.1)")
  if len(set(stds)) != len(stds):
    raise JaxdiffError(f"edm2.ema_stds {stds} lists a width twice; list each once")
  phema.std_to_exp(stds)  # refuses widths outside (0, 0.289)
  every = int(section.get("snapshot_every_images", 0) or 0)
  if every < 0:
    raise JaxdiffError(f"edm2.snapshot_every_images={every} is negative; use 0 (no snapshots) or "
                       "a multiple of the batch")
  if every % batch_size:
    raise JaxdiffError(f"edm2.snapshot_every_images={every} is not a multiple of the batch "
                       f"{batch_size}; choose a multiple so that a step ends on every snapshot")
  return EDM2Spec(ref_batches=float(section.get("ref_batches", EDM2Spec.ref_batches)),
                  ema_stds=stds, snapshot_every_images=every)


@dataclasses.dataclass(frozen=True)
class PowerEMA:
  """The EMA kind of train.step.StepConfig.ema: one power-function EMA per σ_rel."""
  stds: tuple
  batch_size: int

  def update(self, emas, params, step):
    # t = images seen after this step (float32: exact far past any run's length in batches).
    images_after = (jnp.asarray(step, jnp.float32) + 1) * self.batch_size
    return phema.phema_update(emas, params, self.stds, images_after, self.batch_size)


def edm2_loss(cfg, state, key, images, class_labels, aug_labels) -> StepParts:
  """Mean over the batch of the per-example EDM2 loss (Σ over pixels of (w/e^u)·(D − y)² + u), the
  network in training mode. Keys as the plain family's: the step key itself for one micro-batch,
  one folded-in key each for several."""
  n = cfg.grad_accum

  def loss_fn(params, m, images, class_labels, aug_labels):
    loss_key, dropout_key = jax.random.split(key if n == 1 else jax.random.fold_in(key, m))
    net = nnx.merge(cfg.graphdef, params)

    def net_fn(x_in, c_noise, class_labels=None, augment_labels=None):
      return net(x_in, c_noise, class_labels, augment_labels, train=True,
                 rngs=nnx.Rngs(dropout=dropout_key), return_logvar=True)

    def denoise(x, sigma, **cond):
      return L.denoise_and_logvar(cfg.precond, net_fn, x, sigma, **cond)
    cond = dict(class_labels=class_labels)
    if aug_labels is not None:
      cond["augment_labels"] = aug_labels
    return jnp.mean(L.edm2_loss(cfg.loss, denoise, loss_key, images, **cond))
  return StepParts(loss_fn, (images, class_labels, aug_labels))


def make_optimizer(exp):
  o, s = exp.optimizer, exp.family_spec
  return L.edm2_adam(o.lr, o.batch_size, s.ref_batches, o.lr_rampup_images, beta1=o.beta1,
                     beta2=o.beta2, eps=o.eps)


def step_options(exp) -> dict:
  return dict(prepare_params=force_normalize, sanitize=L.sanitize_grads_edm2,
              ema=PowerEMA(exp.family_spec.ema_stds, exp.training.batch_size))


def num_emas(exp) -> int:
  return len(exp.family_spec.ema_stds)


def on_step(exp, workdir: str, step: int, state) -> None:
  """Writes the snapshots of every tracked EMA when the step ends on a multiple of
  edm2.snapshot_every_images (process 0 only)."""
  images = int(step) * exp.training.batch_size
  if not phema.snapshot_due(images, exp.family_spec.snapshot_every_images):
    return
  if jax.process_index() != 0:
    return
  from jaxdiff.train import phema_snapshots
  phema_snapshots.write(workdir, images, exp.family_spec.ema_stds,
                        (state.ema,) + tuple(state.extra_emas))


FAMILY = Family(name="edm2", archs=("edm2",), loss=lambda exp: edm2_loss,
                make_optimizer=make_optimizer, make_spec=make_spec, step_options=step_options,
                num_emas=num_emas, on_step=on_step)
