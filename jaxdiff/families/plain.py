"""The plain family: one network, the EDM-style denoising loss, Adam with the lr ramp-up."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff import losses
from jaxdiff.denoiser import make_denoiser
from jaxdiff.families import Family
from jaxdiff.train import optim
from jaxdiff.train.step import StepParts


def denoising_loss(cfg, state, key, images, class_labels, aug_labels) -> StepParts:
  """Mean per-example denoising loss (losses.denoising_loss) of the network in training mode.
  One micro-batch uses the step key itself; several use one folded-in key each."""
  n = cfg.grad_accum

  def loss_fn(params, m, images, class_labels, aug_labels):
    loss_key, dropout_key = jax.random.split(key if n == 1 else jax.random.fold_in(key, m))
    cond = dict(class_labels=class_labels)
    if aug_labels is not None:
      cond["augment_labels"] = aug_labels
    denoise = make_denoiser(cfg.graphdef, params, cfg.precond, train=True,
                            dropout_key=dropout_key)
    return jnp.mean(losses.denoising_loss(cfg.loss, denoise, loss_key, images, **cond))
  return StepParts(loss_fn, (images, class_labels, aug_labels))


def make_optimizer(exp):
  o = exp.optimizer
  return optim.adam(o.lr, o.batch_size, o.lr_rampup_images, beta1=o.beta1, beta2=o.beta2,
                    eps=o.eps)


FAMILY = Family(name="plain", loss=lambda exp: denoising_loss, make_optimizer=make_optimizer)
