"""Cost of a multi-stage model: forward GFLOPs per stage and the NFE-weighted average over the
network calls of a sampler run (each call runs the shared parts plus its stage's decoder)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import build, sampling
from jaxdiff.multistage import stages
from jaxdiff.multistage.step import multistage_denoiser


def stage_flops(cfg, graphdef, abstract_params, batch: int = 1) -> list:
  """FLOPs (2 per multiply-add, per XLA's cost analysis) of D(x; σ) on `batch` images through
  each stage's decoder; nothing is materialised or compiled."""
  precond = build.make_precond(cfg)
  label_dim = build.label_dim(cfg)
  shape = (batch, cfg.data.resolution, cfg.data.resolution, cfg.data.channels)
  out = []
  for k in range(len(cfg.model.decoder_channels)):
    def fn(params, x, sigma, labels, k=k):
      class_labels = jax.nn.one_hot(labels, label_dim) if label_dim else None
      return multistage_denoiser(graphdef, params, precond, k)(x, sigma, class_labels=class_labels)
    args = (abstract_params, jax.ShapeDtypeStruct(shape, jnp.float32),
            jax.ShapeDtypeStruct((batch,), jnp.float32), jax.ShapeDtypeStruct((batch,), jnp.int32))
    lowered = jax.jit(fn).lower(*args)
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    if not cost or "flops" not in cost:
      cost = lowered.compile().cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out.append(float(cost["flops"]))
  return out


def sampler_call_sigmas(sampler_kwargs: dict) -> np.ndarray:
  """σ of every network call of one sampler run (recorded from a run on a 1-pixel stand-in)."""
  seen = []

  def denoise(x, sigma):
    jax.debug.callback(lambda s: seen.append(float(np.asarray(s).reshape(-1)[0])), sigma)
    return jnp.zeros_like(x)

  out = sampling.sample(denoise, jnp.zeros((1, 1)), key=jax.random.PRNGKey(0), **sampler_kwargs)
  jax.block_until_ready(out)
  jax.effects_barrier()
  return np.asarray(seen, np.float64)


def multistage_info(cfg, solver: str | None = None, num_steps: int | None = None) -> dict:
  """Per-stage GFLOPs, the sampler's calls per stage and its NFE-weighted GFLOPs per image."""
  graphdef, params = build.abstract_network(cfg)
  per_stage = np.asarray(stage_flops(cfg, graphdef, params)) / 1e9
  kw = build.sampler_kwargs(cfg, solver, num_steps)
  sigmas = sampler_call_sigmas(kw)
  k = np.asarray(stages.stage_of_sigma(sigmas.astype(np.float32), cfg.model.stage_boundaries))
  calls = np.bincount(k, minlength=len(per_stage))
  return dict(gflops_per_stage=per_stage.tolist(), stage_boundaries=list(cfg.model.stage_boundaries),
              sampler=dict(solver=kw["solver"], num_steps=kw["num_steps"], nfe=int(len(sigmas)),
                           calls_per_stage=calls.tolist()),
              nfe_weighted_gflops=float(np.dot(calls, per_stage) / max(len(sigmas), 1)))
