"""Cost of a multi-stage model: forward GFLOPs per stage and the NFE-weighted average over the
network calls of a sampler run (each call runs the shared parts plus its stage's decoder)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import families, sampling
from jaxdiff.multistage import stages


def stage_flops(exp, graphdef, abstract_params, batch: int = 1) -> list:
  """FLOPs (2 per multiply-add, per XLA's cost analysis) of D(x; σ) on `batch` images through
  each stage's decoder; nothing is materialised."""
  from jaxdiff.info import forward_flops
  return [forward_flops(exp, graphdef, abstract_params, batch, stage=k)
          for k in range(len(exp.family_spec.probabilities))]


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


def multistage_info(exp, solver: str | None = None, num_steps: int | None = None) -> dict:
  """Per-stage GFLOPs, the sampler's calls per stage and its NFE-weighted GFLOPs per image."""
  graphdef, params = families.abstract_network(exp)
  per_stage = np.asarray(stage_flops(exp, graphdef, params)) / 1e9
  kw = exp.sampling.kwargs(solver, num_steps)
  sigmas = sampler_call_sigmas(kw)
  boundaries = exp.family_spec.boundaries
  k = np.asarray(stages.stage_of_sigma(sigmas.astype(np.float32), boundaries))
  calls = np.bincount(k, minlength=len(per_stage))
  return dict(gflops_per_stage=per_stage.tolist(), stage_boundaries=list(boundaries),
              sampler=dict(solver=kw["solver"], num_steps=kw["num_steps"], nfe=int(len(sigmas)),
                           calls_per_stage=calls.tolist()),
              nfe_weighted_gflops=float(np.dot(calls, per_stage) / max(len(sigmas), 1)))
