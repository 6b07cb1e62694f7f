"""The train-step skeleton: a family's loss, then one shared update tail. It never reads a config.

`train_step(cfg, family_loss, state, batch)`:
  1. the step key fold_in(rng, step); the optional `prepare_params` of the parameters the step
     starts from; the batch's inputs (augmentation, one-hot labels);
  2. the family's loss for this step (`family_loss(...) -> StepParts`), averaged with its gradient
     over `grad_accum` micro-batches;
  3. `apply_update`, the tail every family shares: finite check, sanitize, optimizer update,
     `optax.apply_updates`, an optional mask of the leaves the step may change, the EMAs (half-life
     ones, or the StepConfig's EMA kind), the gradient norm.
The families (jaxdiff/families/) supply `family_loss` and compile the step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdiff.train import ema as ema_lib
from jaxdiff.train.optim import sanitize_grads
from jaxdiff.train.state import TrainState, halflives


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
  # Optional family hooks (None: the plain behaviour, bit for bit).
  prepare_params: Callable | None = None  # params -> params the step starts from (the gradient
                                          #   is taken there and the update added to them)
  sanitize: Callable | None = None        # grads -> grads (None: train.optim.sanitize_grads)
  ema: Any = None              # an EMA kind: .update(emas tuple, params, step) -> tuple of EMAs
                               #   (None: one half-life EMA per ema_halflife_images)


class StepParts(NamedTuple):
  """What a family's loss gives the skeleton for one step."""
  loss_fn: Callable            # (params, m, *inputs) -> scalar loss of micro-batch m
  inputs: tuple                # per-example arrays [B, ...] (or None), split into micro-batches
  keep: Callable | None = None  # (new, old) -> tree: the leaves this step may change (None: all)
  metrics: dict = {}           # extra metrics of the step (e.g. the multi-stage stage)
  aux: Any = None              # the family's new TrainState.aux after this step (None: unchanged);
                               #   e.g. a second network the family updated before this loss


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


def step_inputs(cfg: StepConfig, key, batch: dict):
  """(images, class_labels one-hot or None, augment_labels or None) of `batch` = {image
  [B,H,W,C] float32 in [-1,1], label [B] int32}, augmented when the step config says so."""
  images, labels = batch["image"], batch["label"]
  aug_labels = batch.get("augment_labels")
  if cfg.augment is not None:
    from jaxdiff.data import augment as augment_lib
    # Its own stream, so turning augmentation on leaves the σ / noise / dropout draws unchanged.
    images, aug_labels = augment_lib.augment(cfg.augment, jax.random.fold_in(key, 0x5EED), images)
  class_labels = jax.nn.one_hot(labels, cfg.label_dim) if cfg.label_dim else None
  return images, class_labels, aug_labels


def apply_update(cfg: StepConfig, state: TrainState, grads,
                 keep: Callable | None = None) -> tuple[TrainState, dict]:
  """The shared tail: one optimizer step with `grads`, the EMAs, and the step's metrics.

  Non-finite gradients are reported (grads_finite) and sanitized (NaN -> 0, ±inf -> ±1e5) before
  the update. `keep(new, old)` restricts which leaves of the parameters and optimizer state the
  step changes (multi-stage: the inactive decoders keep theirs). The EMAs follow all parameters.
  grad_norm is the norm of the gradients as computed (inf or NaN when they were not finite).
  """
  # One sum of squares gives both figures: a NaN or ±inf anywhere makes it non-finite. (A per-leaf
  # isfinite check plus a second norm pass cost ~20 % of a tiny step's compile time at level 0.)
  sum_sq = sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads))
  finite = jnp.isfinite(sum_sq)
  grad_norm = jnp.sqrt(sum_sq)
  grads = (cfg.sanitize or sanitize_grads)(grads)
  updates, opt_state = cfg.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if keep is not None:
    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
  if cfg.ema is not None:
    emas = list(cfg.ema.update((state.ema,) + state.extra_emas, params, state.step))
  else:
    emas = []
    for halflife, ema in zip(halflives(cfg.ema_halflife_images), (state.ema,) + state.extra_emas):
      beta = ema_lib.ema_beta(state.step * cfg.batch_size, cfg.batch_size, halflife,
                              cfg.ema_rampup_ratio)
      emas.append(ema_lib.ema_update(ema, params, beta))
  new_state = state.replace(step=state.step + 1, params=params, ema=emas[0], opt_state=opt_state,
                            extra_emas=tuple(emas[1:]))
  return new_state, dict(grad_norm=grad_norm, grads_finite=finite)


def train_step(cfg: StepConfig, family_loss: Callable, state: TrainState,
               batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on `batch` with the loss `family_loss(cfg, state, key, images,
  class_labels, augment_labels) -> StepParts`."""
  key = jax.random.fold_in(state.rng, state.step)
  if cfg.prepare_params is not None:
    # e.g. EDM2's forced weight normalisation: the stored weights are replaced, then trained.
    state = state.replace(params=cfg.prepare_params(state.params))
  images, class_labels, aug_labels = step_inputs(cfg, key, batch)
  parts = family_loss(cfg, state, key, images, class_labels, aug_labels)
  loss, grads = mean_value_and_grad(jax.value_and_grad(parts.loss_fn), state.params, parts.inputs,
                                    cfg.grad_accum)
  new_state, metrics = apply_update(cfg, state, grads, keep=parts.keep)
  if parts.aux is not None:
    new_state = new_state.replace(aux=parts.aux)
  return new_state, dict(loss=loss, **metrics, **parts.metrics)
