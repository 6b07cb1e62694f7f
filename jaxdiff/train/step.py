"""The pure train step: EDM-style denoising loss, Adam, EMA. Jit it once; it never reads a config."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff import losses, precond as precond_lib
from jaxdiff.train import ema as ema_lib
from jaxdiff.train.optim import sanitize_grads
from jaxdiff.train.state import TrainState


def net_apply(graphdef, params, x, c_noise, class_labels=None, augment_labels=None, *,
              train=False, dropout_key=None):
  """The raw network F as a pure function of its parameter tree."""
  net = nnx.merge(graphdef, params)
  rngs = nnx.Rngs(dropout=dropout_key) if dropout_key is not None else None
  return net(x, c_noise, class_labels, augment_labels, train=train, rngs=rngs)


def make_denoiser(graphdef, params, precond, *, train=False, dropout_key=None):
  """D(x; σ, class_labels, augment_labels) for fixed parameters."""
  def net_fn(x_in, c_noise, class_labels=None, augment_labels=None):
    return net_apply(graphdef, params, x_in, c_noise, class_labels, augment_labels, train=train,
                     dropout_key=dropout_key)

  def denoise(x, sigma, class_labels=None, augment_labels=None):
    return precond_lib.denoise(precond, net_fn, x, sigma, class_labels=class_labels,
                               augment_labels=augment_labels)
  return denoise


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Everything static about a train step (hashable)."""
  graphdef: Any
  precond: Any
  loss: Any
  optimizer: Any
  label_dim: int
  batch_size: int              # global batch: EMA and lr ramp-up count images across all hosts
  ema_halflife_images: float
  ema_rampup_ratio: float | None


def train_step(cfg: StepConfig, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on `batch` = {image [B,H,W,C] float32 in [-1,1], label [B] int32}."""
  key = jax.random.fold_in(state.rng, state.step)
  loss_key, dropout_key = jax.random.split(key)
  class_labels = (jax.nn.one_hot(batch["label"], cfg.label_dim) if cfg.label_dim else None)
  cond = dict(class_labels=class_labels)
  if "augment_labels" in batch:
    cond["augment_labels"] = batch["augment_labels"]

  def loss_fn(params):
    denoise = make_denoiser(cfg.graphdef, params, cfg.precond, train=True,
                            dropout_key=dropout_key)
    per_example = losses.denoising_loss(cfg.loss, denoise, loss_key, batch["image"], **cond)
    return jnp.mean(per_example)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  grads = sanitize_grads(grads)
  updates, opt_state = cfg.optimizer.update(grads, state.opt_state, state.params)
  params = jax.tree.map(jnp.add, state.params, updates)
  beta = ema_lib.ema_beta(state.step * cfg.batch_size, cfg.batch_size, cfg.ema_halflife_images,
                          cfg.ema_rampup_ratio)
  ema = ema_lib.ema_update(state.ema, params, beta)
  new_state = state.replace(step=state.step + 1, params=params, ema=ema, opt_state=opt_state)
  grad_norm = jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.tree.leaves(grads)))
  return new_state, dict(loss=loss, grad_norm=grad_norm, grads_finite=finite)


def make_train_step(cfg: StepConfig) -> Callable:
  """Compiled step; the state buffers are donated so the update happens in place."""
  return jax.jit(lambda state, batch: train_step(cfg, state, batch), donate_argnums=0)
