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
from jaxdiff.train.state import TrainState, halflives


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
  ema_halflife_images: float | tuple   # several half-lives: one EMA each (the first is state.ema)
  ema_rampup_ratio: float | None
  grad_accum: int = 1          # micro-batches per step; gradients are averaged over them
  augment: Any = None          # data.augment.AugmentConfig, or None for no augmentation


def _micro_batches(x, n: int):
  """[B, ...] -> [n, B/n, ...] with micro-batch m = examples m, m+n, m+2n, ...: strided, so each
  device of a batch-sharded mesh holds its own share of every micro-batch."""
  return x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)

def mean_value_and_grad(value_and_grad_fn, params, inputs: tuple, n: int):
  """(loss, grads) of `value_and_grad_fn(params, m, *inputs)` averaged over n strided micro-batches
  (m = 0..n-1, summed in one `lax.scan`); with n = 1, one call on the whole batch (m = 0).
  Inputs may be None (absent conditioning)."""
  if n == 1:
    return value_and_grad_fn(params, 0, *inputs)
  batch = next(x for x in inputs if x is not None).shape[0]
  if batch % n:
    raise ValueError(f"batch {batch} is not divisible by grad_accum={n}")
  micro = jax.tree.map(lambda x: None if x is None else _micro_batches(x, n), inputs)

  def body(carry, xs):
    loss_sum, grad_sum = carry
    m, mb = xs
    loss_m, grads_m = value_and_grad_fn(params, m, *mb)
    return (loss_sum + loss_m, jax.tree.map(jnp.add, grad_sum, grads_m)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                  (jnp.arange(n), micro))
  return loss / n, jax.tree.map(lambda g: g / n, grads)



def train_step(cfg: StepConfig, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on `batch` = {image [B,H,W,C] float32 in [-1,1], label [B] int32}."""
  key = jax.random.fold_in(state.rng, state.step)
  images, labels = batch["image"], batch["label"]
  aug_labels = batch.get("augment_labels")
  if cfg.augment is not None:
    from jaxdiff.data import augment as augment_lib
    # Its own stream, so turning augmentation on leaves the σ / noise / dropout draws unchanged.
    images, aug_labels = augment_lib.augment(cfg.augment, jax.random.fold_in(key, 0x5EED), images)
  class_labels = (jax.nn.one_hot(labels, cfg.label_dim) if cfg.label_dim else None)

  def loss_fn(params, key, images, class_labels, aug_labels):
    loss_key, dropout_key = jax.random.split(key)
    cond = dict(class_labels=class_labels)
    if aug_labels is not None:
      cond["augment_labels"] = aug_labels
    denoise = make_denoiser(cfg.graphdef, params, cfg.precond, train=True,
                            dropout_key=dropout_key)
    per_example = losses.denoising_loss(cfg.loss, denoise, loss_key, images, **cond)
    return jnp.mean(per_example)

  grad_fn = jax.value_and_grad(loss_fn)
  n = cfg.grad_accum
  # One micro-batch uses the step key itself; several use one folded-in key each.
  loss, grads = mean_value_and_grad(
      lambda p, m, *xs: grad_fn(p, key if n == 1 else jax.random.fold_in(key, m), *xs),
      state.params, (images, class_labels, aug_labels), n)

  finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  grads = sanitize_grads(grads)
  updates, opt_state = cfg.optimizer.update(grads, state.opt_state, state.params)
  params = jax.tree.map(jnp.add, state.params, updates)
  emas = []
  for halflife, ema in zip(halflives(cfg.ema_halflife_images), (state.ema,) + state.extra_emas):
    beta = ema_lib.ema_beta(state.step * cfg.batch_size, cfg.batch_size, halflife,
                            cfg.ema_rampup_ratio)
    emas.append(ema_lib.ema_update(ema, params, beta))
  new_state = state.replace(step=state.step + 1, params=params, ema=emas[0], opt_state=opt_state,
                            extra_emas=tuple(emas[1:]))
  grad_norm = jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.tree.leaves(grads)))
  return new_state, dict(loss=loss, grad_norm=grad_norm, grads_finite=finite)


def make_train_step(cfg: StepConfig, state_sharding=None, batch_sharding=None) -> Callable:
  """Compiled step; the state buffers are donated so the update happens in place.

  With shardings (see train.sharding), the step is compiled for that layout: XLA inserts the
  gradient all-reduce (data parallel) or the parameter all-gathers (FSDP) itself.
  """
  fn = lambda state, batch: train_step(cfg, state, batch)  # noqa: E731
  if state_sharding is None:
    return jax.jit(fn, donate_argnums=0)
  from jax.sharding import NamedSharding, PartitionSpec
  replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
  return jax.jit(fn, donate_argnums=0, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, replicated))
