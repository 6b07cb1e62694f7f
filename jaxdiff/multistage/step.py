"""The multi-stage train step and optimizer.

Stochastic mode (the reference): each step draws one stage with its probability mass under the
training σ distribution, draws the whole batch's σ from that distribution restricted to the
stage, and runs the shared parts plus that stage's decoder only. Decoders of other stages get no
parameter change and no Adam moment/count update (their new values are replaced by the old ones,
so the result does not depend on the optimizer leaving zero-gradient leaves alone).

Stratified mode (for comparison): every step splits the batch into fixed per-stage shares, each
with σ from its stage; the loss is Σ_k p_k · mean over share k — the same objective, lower
variance, but every decoder runs and is updated every step.

The optimizer from `make_multistage_optimizer` keeps a separate Adam state (moments and bias
-correction count) per top-level part, as PyTorch's per-parameter Adam state in the reference
does; the learning-rate ramp-up counts global steps.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxdiff import losses, precond as precond_lib
from jaxdiff.errors import JaxdiffError
from jaxdiff.multistage import stages
from jaxdiff.train import ema as ema_lib
from jaxdiff.train.optim import lr_schedule, sanitize_grads
from jaxdiff.train.state import TrainState, halflives
from jaxdiff.train.step import StepConfig, mean_value_and_grad

MODES = ("stochastic", "stratified")


@dataclasses.dataclass(frozen=True)
class MultiStageConfig:
  boundaries: tuple          # σ stage boundaries (K - 1 increasing values)
  probabilities: tuple       # each stage's probability mass under the loss's σ distribution
  mode: str = "stochastic"
  counts: tuple = ()         # stratified: examples per stage


def multistage_config(cfg, loss, batch_size: int) -> MultiStageConfig:
  boundaries = stages.check_boundaries(cfg.model.stage_boundaries)
  k = len(boundaries) + 1
  if len(cfg.model.decoder_channels) != k:
    raise JaxdiffError(f"model.decoder_channels has {len(cfg.model.decoder_channels)} widths for "
                       f"{k} stages; give one per stage")
  ms = cfg.get("multistage", None)
  mode = ms.get("mode", "stochastic") if ms is not None else "stochastic"
  if mode not in MODES:
    raise JaxdiffError(f"multistage.mode {mode!r}: use 'stochastic' or 'stratified'")
  probs = stages.stage_probabilities(loss, boundaries)
  counts = stages.stratified_counts(probs, batch_size) if mode == "stratified" else ()
  return MultiStageConfig(boundaries, tuple(float(p) for p in probs), mode, counts)


def multistage_denoiser(graphdef, params, precond, stage, *, train=False, dropout_key=None):
  """D(x; σ) through the decoder of `stage` (int, or traced int32 scalar)."""
  def net_fn(x_in, c_noise, class_labels=None, augment_labels=None):
    net = nnx.merge(graphdef, params)
    rngs = nnx.Rngs(dropout=dropout_key) if dropout_key is not None else None
    return net(x_in, c_noise, class_labels, augment_labels, train=train, rngs=rngs, stage=stage)

  def denoise(x, sigma, class_labels=None, augment_labels=None):
    return precond_lib.denoise(precond, net_fn, x, sigma, class_labels=class_labels,
                               augment_labels=augment_labels)
  return denoise


def step_stage(ms: MultiStageConfig, rng, step):
  """The stage that stochastic step `step` trains (int32 scalar): the draw the step itself makes."""
  stage_key = jax.random.split(jax.random.fold_in(rng, step), 4)[0]
  return stages.draw_stage(stage_key, ms.probabilities)


def multistage_train_step(cfg: StepConfig, ms: MultiStageConfig, state: TrainState,
                          batch: dict, stage: int | None = None) -> tuple[TrainState, dict]:
  """One step. Stochastic mode draws the stage inside (traced: the network switches between
  decoders), unless `stage` gives the step's own draw as a Python int (see StageDispatch)."""
  key = jax.random.fold_in(state.rng, state.step)
  _, sigma_key, loss_key, dropout_key = jax.random.split(key, 4)  # [0]: step_stage's key
  y, labels = batch["image"], batch["label"]
  aug_labels = batch.get("augment_labels")
  if getattr(cfg, "augment", None) is not None:
    from jaxdiff.data import augment as augment_lib
    y, aug_labels = augment_lib.augment(cfg.augment, jax.random.fold_in(key, 0x5EED), y)
  class_labels = (jax.nn.one_hot(labels, cfg.label_dim) if cfg.label_dim else None)
  B = y.shape[0]
  n = int(getattr(cfg, "grad_accum", 1))
  if B % n:
    raise ValueError(f"batch {B} is not divisible by grad_accum={n}")

  if ms.mode == "stochastic":
    if stage is None:
      stage = step_stage(ms, state.rng, state.step)
    sigma = stages.sample_stage_sigma(cfg.loss, sigma_key, stage, ms.boundaries, (B,))

    def loss_fn(params, m, y, sigma, class_labels, aug_labels):
      cond = dict(class_labels=class_labels)
      if aug_labels is not None:
        cond["augment_labels"] = aug_labels
      denoise = multistage_denoiser(cfg.graphdef, params, cfg.precond, stage, train=True,
                                    dropout_key=jax.random.fold_in(dropout_key, m))
      per_example = losses.denoising_loss(cfg.loss, denoise, jax.random.fold_in(loss_key, m), y,
                                          sigma=sigma, **cond)
      return jnp.mean(per_example)
  else:
    stage = jnp.asarray(-1, jnp.int32)  # every decoder is used
    sigma = jnp.zeros((B,), jnp.float32)  # drawn per share below
    if n > 1:
      raise JaxdiffError("multistage.mode = 'stratified' does not support grad_accum > 1")
    edges = np.concatenate([[0], np.cumsum(ms.counts)])

    def loss_fn(params, m, y, sigma, class_labels, aug_labels):
      del sigma
      total = 0.0
      for k in range(len(ms.counts)):
        a, b = int(edges[k]), int(edges[k + 1])
        cond = dict(class_labels=None if class_labels is None else class_labels[a:b])
        if aug_labels is not None:
          cond["augment_labels"] = aug_labels[a:b]
        s_k = stages.sample_stage_sigma(cfg.loss, jax.random.fold_in(sigma_key, k), k,
                                        ms.boundaries, (b - a,))
        denoise = multistage_denoiser(cfg.graphdef, params, cfg.precond, k, train=True,
                                      dropout_key=jax.random.fold_in(dropout_key, k))
        per_example = losses.denoising_loss(cfg.loss, denoise, jax.random.fold_in(loss_key, k),
                                            y[a:b], sigma=s_k, **cond)
        total = total + ms.probabilities[k] * jnp.mean(per_example)
      return total

  loss, grads = mean_value_and_grad(jax.value_and_grad(loss_fn), state.params,
                                    (y, sigma, class_labels, aug_labels), n)

  finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  grads = sanitize_grads(grads)
  updates, opt_state = cfg.optimizer.update(grads, state.opt_state, state.params)
  params = jax.tree.map(jnp.add, state.params, updates)
  if ms.mode == "stochastic":
    params = stages.keep_inactive_decoders(params, state.params, stage)
    opt_state = stages.keep_inactive_decoders(opt_state, state.opt_state, stage)
  # EMAs over all parameters every step, as the reference (an idle decoder's EMA keeps converging).
  extra = tuple(getattr(state, "extra_emas", ()))
  emas = []
  for halflife, ema in zip(halflives(cfg.ema_halflife_images), (state.ema,) + extra):
    beta = ema_lib.ema_beta(state.step * cfg.batch_size, cfg.batch_size, halflife,
                            cfg.ema_rampup_ratio)
    emas.append(ema_lib.ema_update(ema, params, beta))
  updates = dict(step=state.step + 1, params=params, ema=emas[0], opt_state=opt_state)
  if hasattr(state, "extra_emas"):
    updates["extra_emas"] = tuple(emas[1:])
  new_state = state.replace(**updates)
  grad_norm = jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.tree.leaves(grads)))
  return new_state, dict(loss=loss, grad_norm=grad_norm, grads_finite=finite,
                         stage=jnp.asarray(stage, jnp.int32))


class StageDispatch:
  """(state, batch) -> (state, metrics) for stochastic training: one compiled step per stage.

  Each call reads the step's stage (`step_stage`, the draw the step would make; one scalar from
  the device) and runs that stage's own program, in which the decoder is fixed. Why not one
  program with the network's lax.switch: XLA:CPU (jaxlib 0.10) lowers the weight gradients of
  convolutions inside a conditional branch with its naive loop emitter; on
  configs/digits_multistage.py that step took 5.1 s against 0.83 s for a stratified step that
  runs all three decoders. A stage's program is compiled on its first draw.
  """

  def __init__(self, cfg: StepConfig, ms: MultiStageConfig, **jit_kwargs):
    self._stage = jax.jit(lambda rng, step: step_stage(ms, rng, step))
    self._steps = [jax.jit(lambda state, batch, k=k: multistage_train_step(cfg, ms, state, batch,
                                                                           stage=k),
                           **jit_kwargs) for k in range(len(ms.probabilities))]

  def __call__(self, state: TrainState, batch: dict):
    return self._steps[int(self._stage(state.rng, state.step))](state, batch)


def compile_multistage_step(cfg: StepConfig, config, **jit_kwargs) -> Callable:
  """The train step `jaxdiff train` runs: StageDispatch (stochastic) or one jitted program
  (stratified), compiled with `jit_kwargs` (shardings, donation)."""
  ms = multistage_config(config, cfg.loss, cfg.batch_size)
  if ms.mode == "stochastic":
    return StageDispatch(cfg, ms, **jit_kwargs)
  return jax.jit(lambda state, batch: multistage_train_step(cfg, ms, state, batch), **jit_kwargs)


def _part_labels(params):
  return jax.tree_util.tree_map_with_path(lambda path, _: str(path[0].key), params)


def partitioned_adam(lr: float, batch_size: int, rampup_images: float, beta1=0.9, beta2=0.999,
                     eps=1e-8) -> optax.GradientTransformation:
  """Adam with one state (moments + bias-correction count) per top-level part of the parameter
  tree, and the lr ramp-up on the global step count."""
  schedule = lr_schedule(lr, batch_size, rampup_images)

  def init(params):
    parts = sorted(set(jax.tree.leaves(_part_labels(params))))
    inner = optax.multi_transform({p: optax.scale_by_adam(beta1, beta2, eps) for p in parts},
                                  _part_labels)
    return inner.init(params), optax.scale_by_schedule(lambda c: -schedule(c)).init(params)

  def update(updates, state, params=None):
    parts = sorted(set(jax.tree.leaves(_part_labels(updates))))
    inner = optax.multi_transform({p: optax.scale_by_adam(beta1, beta2, eps) for p in parts},
                                  _part_labels)
    outer = optax.scale_by_schedule(lambda c: -schedule(c))
    updates, s0 = inner.update(updates, state[0], params)
    updates, s1 = outer.update(updates, state[1], params)
    return updates, (s0, s1)

  return optax.GradientTransformation(init, update)


def make_multistage_optimizer(cfg) -> optax.GradientTransformation:
  """The optimizer for a multi-stage config (per-part Adam state; see `partitioned_adam`)."""
  t = cfg.training
  return partitioned_adam(t.lr, t.batch_size, t.lr_rampup_images, beta1=cfg.optimizer.beta1,
                          beta2=cfg.optimizer.beta2, eps=cfg.optimizer.eps)
