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

from jaxdiff import losses
from jaxdiff.denoiser import make_denoiser
from jaxdiff.errors import JaxdiffError
from jaxdiff.multistage import stages
from jaxdiff.train.optim import lr_schedule
from jaxdiff.train.state import TrainState
from jaxdiff.train.step import StepConfig, StepParts, train_step

MODES = ("stochastic", "stratified")


@dataclasses.dataclass(frozen=True)
class MultiStageConfig:
  boundaries: tuple          # σ stage boundaries (K - 1 increasing values)
  probabilities: tuple       # each stage's probability mass under the loss's σ distribution
  mode: str = "stochastic"
  counts: tuple = ()         # stratified: examples per stage


def multistage_config(network, loss, batch_size: int, section: dict) -> MultiStageConfig:
  """The family's settings from the network spec (model.stage_boundaries, model.decoder_channels)
  and the config's `multistage` section (a plain dict: mode)."""
  boundaries = stages.check_boundaries(network.get("stage_boundaries", (2.5103, 7.6577)))
  k = len(boundaries) + 1
  decoders = network.get("decoder_channels", (192, 128, 16))
  if len(decoders) != k:
    raise JaxdiffError(f"model.decoder_channels has {len(decoders)} widths for "
                       f"{k} stages; give one per stage")
  mode = section.get("mode", "stochastic")
  if mode not in MODES:
    raise JaxdiffError(f"multistage.mode {mode!r}: use 'stochastic' or 'stratified'")
  probs = stages.stage_probabilities(loss, boundaries)
  counts = stages.stratified_counts(probs, batch_size) if mode == "stratified" else ()
  return MultiStageConfig(boundaries, tuple(float(p) for p in probs), mode, counts)


def step_stage(ms: MultiStageConfig, rng, step):
  """The stage that stochastic step `step` trains (int32 scalar): the draw the step itself makes."""
  stage_key = jax.random.split(jax.random.fold_in(rng, step), 4)[0]
  return stages.draw_stage(stage_key, ms.probabilities)


def keep_stage(stage):
  """The update mask of a stochastic step on `stage`: other decoders keep their parameters and
  optimizer state (moments and counts)."""
  return lambda new, old: stages.keep_inactive_decoders(new, old, stage)


def multistage_loss(ms: MultiStageConfig, stage=None):
  """The family loss (see train.step.train_step) of one multi-stage step. Stochastic mode draws
  the stage inside (traced: the network switches between decoders), unless `stage` gives the
  step's own draw as a Python int (see StageDispatch)."""
  def family_loss(cfg: StepConfig, state, key, y, class_labels, aug_labels) -> StepParts:
    _, sigma_key, loss_key, dropout_key = jax.random.split(key, 4)  # [0]: step_stage's key
    B = y.shape[0]
    if ms.mode == "stochastic":
      k = step_stage(ms, state.rng, state.step) if stage is None else stage
      sigma = stages.sample_stage_sigma(cfg.loss, sigma_key, k, ms.boundaries, (B,))

      def loss_fn(params, m, y, sigma, class_labels, aug_labels):
        cond = dict(class_labels=class_labels)
        if aug_labels is not None:
          cond["augment_labels"] = aug_labels
        denoise = make_denoiser(cfg.graphdef, params, cfg.precond, stage=k, train=True,
                                dropout_key=jax.random.fold_in(dropout_key, m))
        per_example = losses.denoising_loss(cfg.loss, denoise, jax.random.fold_in(loss_key, m),
                                            y, sigma=sigma, **cond)
        return jnp.mean(per_example)
      return StepParts(loss_fn, (y, sigma, class_labels, aug_labels), keep=keep_stage(k),
                       metrics=dict(stage=jnp.asarray(k, jnp.int32)))

    if cfg.grad_accum > 1:
      raise JaxdiffError("multistage.mode = 'stratified' does not support grad_accum > 1")
    edges = np.concatenate([[0], np.cumsum(ms.counts)])

    def stratified_fn(params, m, y, class_labels, aug_labels):
      total = 0.0
      for k in range(len(ms.counts)):
        a, b = int(edges[k]), int(edges[k + 1])
        cond = dict(class_labels=None if class_labels is None else class_labels[a:b])
        if aug_labels is not None:
          cond["augment_labels"] = aug_labels[a:b]
        s_k = stages.sample_stage_sigma(cfg.loss, jax.random.fold_in(sigma_key, k), k,
                                        ms.boundaries, (b - a,))
        denoise = make_denoiser(cfg.graphdef, params, cfg.precond, stage=k, train=True,
                                dropout_key=jax.random.fold_in(dropout_key, k))
        per_example = losses.denoising_loss(cfg.loss, denoise, jax.random.fold_in(loss_key, k),
                                            y[a:b], sigma=s_k, **cond)
        total = total + ms.probabilities[k] * jnp.mean(per_example)
      return total
    # Every decoder is used: no update mask.
    return StepParts(stratified_fn, (y, class_labels, aug_labels),
                     metrics=dict(stage=jnp.asarray(-1, jnp.int32)))
  return family_loss


def multistage_train_step(cfg: StepConfig, ms: MultiStageConfig, state: TrainState,
                          batch: dict, stage: int | None = None) -> tuple[TrainState, dict]:
  """One multi-stage step: the skeleton with the multi-stage loss (EMAs over all parameters
  every step, as the reference: an idle decoder's EMA keeps converging)."""
  return train_step(cfg, multistage_loss(ms, stage), state, batch)


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


def compile_multistage_step(cfg: StepConfig, ms: MultiStageConfig, **jit_kwargs) -> Callable:
  """The train step `jaxdiff train` runs: StageDispatch (stochastic) or one jitted program
  (stratified), compiled with `jit_kwargs` (shardings, donation)."""
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


def make_multistage_optimizer(optimizer) -> optax.GradientTransformation:
  """The optimizer of a multi-stage model from its OptimizerSpec (per-part Adam state; see
  `partitioned_adam`)."""
  o = optimizer
  return partitioned_adam(o.lr, o.batch_size, o.lr_rampup_images, beta1=o.beta1, beta2=o.beta2,
                          eps=o.eps)
