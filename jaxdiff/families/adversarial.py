"""The adversarial family: fine-tuning a trained denoiser with the EDM denoising loss plus
λ · an adversarial term on its outputs, against a discriminator trained jointly.

Selected by an `adversarial` section (any denoiser network). `adversarial.init=DIR` names a trained
workdir: its EMA weights start the denoiser (the raw weights and every EMA), and its data shape and
label count must be this config's (one-line error otherwise, before anything is written). The
result is an ordinary workdir: `jaxdiff sample` / `jaxdiff.load` read its denoiser as any other;
the discriminator lives beside it in `TrainState.aux` ({"params", "opt_state"}) and is only
checkpointed, to resume exactly.

The losses are those of DDGAN (Xiao, Kreis & Vahdat, ICLR 2022, "Tackling the Generative Learning
Trilemma with Denoising Diffusion GANs", official train_ddgan.py), i.e. the non-saturating GAN loss
of Goodfellow et al. (2014) with an R1 penalty on real data (Mescheder et al., 2018):

  L_D(φ) = E[softplus(−l_φ(x_real))] + E[softplus(l_φ(x_fake))] + γ/2 · E‖∇_x l_φ(x_real)‖²
  L_G(θ) = E[softplus(−l_φ(x_fake(θ)))]

with l_φ the discriminator's logit, updated in DDGAN's order within every step: first one Adam step
of φ on L_D (fakes from the current θ, held fixed), then one step of θ on
L_denoise(θ) + λ · L_G(θ) against the updated φ (the skeleton's shared tail, EMA and all).
What is adapted (docs/adversarial.md): DDGAN's discriminator compares x_{t−1} given x_t; here the
discriminator is the noise-level-conditioned d(x_σ', σ') of discriminator guidance
(jaxdiff/nets/discriminator.py through jaxdiff.discriminator.DiscriminatorLoss), and it compares
real images with the denoiser's outputs x_fake = D_θ(y + σn; σ) (σ from the EDM training law, the
same forward pass as the denoising loss), both diffused again to a log-uniform σ' (Diffusion-GAN's
instance noise). The R1 gradient is taken with respect to that noisy input.

With λ = 0 the denoiser's update is the plain family's, bit for bit (the same keys), and the
discriminator, which could not affect it, is not trained: the bench's control, "the base continued
with the plain loss", is this config with `adversarial.weight=0`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxdiff.denoiser import make_denoiser, net_apply
from jaxdiff.discriminator import DiscriminatorLoss
from jaxdiff.errors import JaxdiffError
from jaxdiff.families import Family, default_compile_step
from jaxdiff.families.plain import make_optimizer
from jaxdiff.specs import NetworkSpec
from jaxdiff.train.optim import sanitize_grads
from jaxdiff.train.step import StepParts

_KEYS = ("init", "weight", "r1_gamma", "disc_lr", "disc_beta1", "disc_beta2", "sigma_min",
         "sigma_max", "disc")
_D_STREAM = 0xD15C      # fold_in of the step key: the discriminator update's own draws
_G_STREAM = 0x6E4       # fold_in of the generator loss key: σ', n' of the adversarial term
_DISC_SEED = 0xD15C     # added to training.seed: the discriminator's initial weights


@dataclasses.dataclass(frozen=True)
class AdversarialSpec:
  init: str                   # trained workdir whose EMA weights start the denoiser
  weight: float               # λ of the adversarial term in the denoiser's loss
  r1_gamma: float             # γ of the R1 penalty γ/2·E‖∇_x l(x_real)‖² (DDGAN's r1_gamma)
  disc_net: NetworkSpec       # the discriminator network (arch "discriminator")
  d_loss: DiscriminatorLoss   # its σ' law on [sigma_min, sigma_max], input scaling c_in
  disc_lr: float = 1.25e-4    # DDGAN's CIFAR-10 lr_d, Adam betas (0.5, 0.9)
  disc_beta1: float = 0.5
  disc_beta2: float = 0.9


# ---------------------------------------------------------------- the two losses (pure)
def generator_loss(fake_logits):
  """Non-saturating generator loss E[softplus(−l)] = E[−log d] of fake logits [B]."""
  return jnp.mean(jax.nn.softplus(-jnp.asarray(fake_logits, jnp.float32)))


def discriminator_loss(real_logits, fake_logits, real_grad_sq=None, r1_gamma: float = 0.0):
  """E[softplus(−l_real)] + E[softplus(l_fake)] (+ γ/2 · E‖∇_x l_real‖², given the squared
  gradient norms [B] of the real logits)."""
  loss = (jnp.mean(jax.nn.softplus(-jnp.asarray(real_logits, jnp.float32)))
          + jnp.mean(jax.nn.softplus(jnp.asarray(fake_logits, jnp.float32))))
  if real_grad_sq is not None and r1_gamma:
    loss = loss + r1_gamma / 2 * jnp.mean(real_grad_sq)
  return loss


def diffuse(d_loss: DiscriminatorLoss, key, x):
  """(x + σ'n', σ' [B]) with σ' from d_loss's log-uniform law: what the discriminator sees."""
  k_sigma, k_noise = jax.random.split(key)
  sigma = d_loss.sample_sigma(k_sigma, x.shape[0])
  bcast = (-1,) + (1,) * (x.ndim - 1)
  return x + sigma.reshape(bcast) * jax.random.normal(k_noise, x.shape, jnp.float32), sigma


def disc_logit_fn(spec: AdversarialSpec, disc_graphdef, disc_params, *, dropout_key=None):
  """logit(x_noisy, σ', one-hot labels) -> [B] of the discriminator (training mode)."""
  def net(x_in, c_noise, labels):
    return net_apply(disc_graphdef, disc_params, x_in, c_noise, labels, train=True,
                     dropout_key=dropout_key)
  return lambda x, sigma, labels: spec.d_loss.logits(net, x, sigma, labels)


def disc_objective(spec, disc_graphdef, disc_params, key, real, fake, labels):
  """(L_D, metrics) of one discriminator batch: real and fake clean images, each diffused to its
  own σ'; R1 on the real logits' gradient with respect to their noisy input."""
  k_real, k_fake, k_drop = jax.random.split(key, 3)
  logit = disc_logit_fn(spec, disc_graphdef, disc_params, dropout_key=k_drop)
  x_real, s_real = diffuse(spec.d_loss, k_real, real)
  x_fake, s_fake = diffuse(spec.d_loss, k_fake, fake)
  real_logits, vjp = jax.vjp(lambda x: logit(x, s_real, labels), x_real)
  fake_logits = logit(x_fake, s_fake, labels)
  grad_sq = None
  if spec.r1_gamma:
    (g,) = vjp(jnp.ones_like(real_logits))  # rows independent: ∇ of the sum is per example
    grad_sq = jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)
  loss = discriminator_loss(real_logits, fake_logits, grad_sq, spec.r1_gamma)
  acc = 0.5 * (jnp.mean(real_logits > 0) + jnp.mean(fake_logits < 0))
  return loss, {"d_loss": loss, "d_accuracy": acc}


def disc_optimizer(spec: AdversarialSpec):
  return optax.adam(spec.disc_lr, b1=spec.disc_beta1, b2=spec.disc_beta2)


def disc_update(spec, disc_graphdef, aux, key, real, fake, labels):
  """One Adam step of the discriminator on L_D: (new aux, metrics)."""
  (_, metrics), grads = jax.value_and_grad(
      lambda p: disc_objective(spec, disc_graphdef, p, key, real, fake, labels),
      has_aux=True)(aux["params"])
  updates, opt_state = disc_optimizer(spec).update(sanitize_grads(grads), aux["opt_state"],
                                                   aux["params"])
  return {"params": optax.apply_updates(aux["params"], updates), "opt_state": opt_state}, metrics


# ---------------------------------------------------------------- the family loss
def _denoise_and_loss(cfg, params, key, dropout_key, y, cond):
  """(D_θ(y + n; σ), per-example λ(σ)‖D − y‖² mean) with losses.denoising_loss's own draws from
  `key` (σ from the first half, n from the second), so λ = 0 is the plain family exactly."""
  key_sigma, key_noise = jax.random.split(key)
  sigma = cfg.loss.sample_sigma(key_sigma, (y.shape[0],)).astype(jnp.float32)
  bcast = (y.shape[0],) + (1,) * (y.ndim - 1)
  n = jax.random.normal(key_noise, y.shape, jnp.float32) * sigma.reshape(bcast)
  denoise = make_denoiser(cfg.graphdef, params, cfg.precond, train=True, dropout_key=dropout_key)
  D = jnp.asarray(denoise(y + n, sigma, **cond), jnp.float32)
  per_example = cfg.loss.weight(sigma) * jnp.mean((D - y) ** 2, axis=tuple(range(1, y.ndim)))
  return D, per_example


def adversarial_family_loss(spec: AdversarialSpec, disc_graphdef):
  """The family loss (train.step.train_step): the discriminator's update (returned as the new
  aux), then the denoiser's L_denoise + λ·L_G against the updated discriminator."""
  def family_loss(cfg, state, key, images, class_labels, aug_labels) -> StepParts:
    cond = dict(class_labels=class_labels)
    if aug_labels is not None:
      cond["augment_labels"] = aug_labels
    aux, d_metrics = None, {}
    if spec.weight:  # λ = 0 (the control): D never reaches the denoiser, so it is not trained
      # 1. D step on the whole batch; its fakes from the current denoiser, held fixed.
      k_sample, k_drop, k_disc = jax.random.split(jax.random.fold_in(key, _D_STREAM), 3)
      fake, _ = _denoise_and_loss(cfg, state.params, k_sample, k_drop, images, cond)
      aux, d_metrics = disc_update(spec, disc_graphdef, state.aux, k_disc, images,
                                   jax.lax.stop_gradient(fake), class_labels)
      disc_params = jax.lax.stop_gradient(aux["params"])

    # 2. G: the plain loss's draws (as plain.denoising_loss) plus λ·L_G on the same outputs.
    def loss_fn(params, m, images, class_labels, aug_labels):
      loss_key, dropout_key = jax.random.split(key if cfg.grad_accum == 1
                                               else jax.random.fold_in(key, m))
      c = dict(class_labels=class_labels)
      if aug_labels is not None:
        c["augment_labels"] = aug_labels
      D, per_example = _denoise_and_loss(cfg, params, loss_key, dropout_key, images, c)
      loss = jnp.mean(per_example)
      if spec.weight:
        k_g, k_gdrop = jax.random.split(jax.random.fold_in(loss_key, _G_STREAM))
        x, s = diffuse(spec.d_loss, k_g, D)
        logit = disc_logit_fn(spec, disc_graphdef, disc_params, dropout_key=k_gdrop)
        loss = loss + spec.weight * generator_loss(logit(x, s, class_labels))
      return loss
    return StepParts(loss_fn, (images, class_labels, aug_labels), metrics=d_metrics, aux=aux)
  return family_loss


# ---------------------------------------------------------------- spec, networks, inputs
def make_spec(network, loss, batch_size, section: dict) -> AdversarialSpec:
  unknown = sorted(set(section) - set(_KEYS))
  if unknown:
    raise JaxdiffError(f"adversarial has key(s) {unknown}; its options are {sorted(_KEYS)}")
  init = section.get("init") or ""
  if not init:
    raise JaxdiffError("adversarial fine-tuning starts from a trained model; set "
                       "--config.adversarial.init=DIR")
  if network.arch in ("discriminator", "multistage"):
    raise JaxdiffError(f"adversarial fine-tuning needs a single denoiser network; model.arch="
                       f"{network.arch!r} is not supported")
  lo, hi = float(section.get("sigma_min", 0.002)), float(section.get("sigma_max", 80.0))
  if not 0 < lo < hi < math.inf:
    raise JaxdiffError(f"adversarial.sigma_min={lo}, sigma_max={hi}: need 0 < sigma_min < "
                       "sigma_max")
  weight, gamma = float(section.get("weight", 0.01)), float(section.get("r1_gamma", 0.02))
  if weight < 0 or gamma < 0:
    raise JaxdiffError(f"adversarial.weight={weight}, r1_gamma={gamma}: both must be >= 0")
  # The discriminator's model options, hashable (lists as tuples), its input the denoiser's.
  disc = {k: tuple(v) if isinstance(v, list) else v for k, v in (section.get("disc") or {}).items()}
  disc["arch"] = "discriminator"
  disc_net = NetworkSpec(arch="discriminator", options=tuple(sorted(disc.items())),
                         img_resolution=network.img_resolution,
                         img_channels=network.img_channels, label_dim=network.label_dim)
  d_loss = DiscriminatorLoss(sigma_min=lo, sigma_max=hi,
                             sigma_data=float(getattr(loss, "sigma_data", 0.5)))
  return AdversarialSpec(init=init, weight=weight, r1_gamma=gamma, disc_net=disc_net,
                         d_loss=d_loss, disc_lr=float(section.get("disc_lr", 1.25e-4)),
                         disc_beta1=float(section.get("disc_beta1", 0.5)),
                         disc_beta2=float(section.get("disc_beta2", 0.9)))


def disc_network(spec: AdversarialSpec, seed: int):
  """(graphdef, fresh params) of the discriminator."""
  from jaxdiff.nets import build_network
  n = spec.disc_net
  net = build_network(n.as_dict(), img_resolution=n.img_resolution, img_channels=n.img_channels,
                      label_dim=n.label_dim, rngs=nnx.Rngs(params=seed))
  return nnx.split(net, nnx.Param)


def init_aux(exp, seed: int):
  """A fresh discriminator and its Adam state: the run's TrainState.aux."""
  spec = exp.family_spec
  _, params = disc_network(spec, seed + _DISC_SEED)
  return {"params": params, "opt_state": disc_optimizer(spec).init(params)}


def _source(exp):
  from jaxdiff.model import load  # the workdir's own config and EMA weights (no optimizer)
  init = exp.family_spec.init
  try:
    return load(init)
  except JaxdiffError as e:
    raise JaxdiffError(f"adversarial.init={init!r}: {e}") from None


def check_inputs(exp) -> None:
  """Before `jaxdiff train` writes anything: the init workdir is a denoiser of this data shape,
  label count and parameter layout."""
  init = exp.family_spec.init
  src = _source(exp)
  if src.exp.family in ("discriminator", "consistency"):
    raise JaxdiffError(f"adversarial.init={init!r} is a {src.exp.family} model; fine-tune a "
                       "diffusion (EDM) workdir")
  a, b = exp.data, src.exp.data
  mine = (a.resolution, a.channels, a.num_classes)
  theirs = (b.resolution, b.channels, b.num_classes)
  if mine != theirs:
    raise JaxdiffError(f"adversarial.init={init!r} is a model of {theirs[0]}x{theirs[0]}x"
                       f"{theirs[1]} images with {theirs[2]} classes, this config's data are "
                       f"{mine[0]}x{mine[0]}x{mine[1]} with {mine[2]}; fine-tune it on its data")
  _check_params(exp, src.params)


def _check_params(exp, source_params):
  from jaxdiff import families
  _, want = families.abstract_network(exp)
  shapes = lambda tree: jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)  # noqa: E731
  if (jax.tree.structure(source_params) != jax.tree.structure(want)
      or shapes(source_params) != shapes(want)):
    raise JaxdiffError(f"adversarial.init={exp.family_spec.init!r} holds a network of other "
                       "parameter shapes than this config's model; use its model section")


def init_params(exp, params):
  """The EMA weights of adversarial.init in place of the fresh ones."""
  src = _source(exp)
  _check_params(exp, src.params)
  return src.params


def loss(exp):
  graphdef, _ = jax.eval_shape(lambda: disc_network(exp.family_spec, 0))
  return adversarial_family_loss(exp.family_spec, graphdef)


def compile_step(step_cfg, exp, **jit_kwargs):
  return default_compile_step(loss(exp), step_cfg, **jit_kwargs)


def info(exp) -> dict:
  _, p = jax.eval_shape(lambda: disc_network(exp.family_spec, 0))
  return {"discriminator_params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(p)))}


FAMILY = Family(name="adversarial", loss=loss, make_optimizer=make_optimizer,
                compile_step=compile_step, make_spec=make_spec, selected_by_section=True,
                init_params=init_params, check_inputs=check_inputs, init_aux=init_aux, info=info)
