"""Model size and cost from a config, without materialising weights: parameter counts per part
and forward-pass FLOPs from XLA's cost analysis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import build
from jaxdiff.train.step import make_denoiser


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def params_by_part(params) -> dict:
  """Parameter count of each top-level submodule (e.g. encoder / decoders / embedding)."""
  out = {}
  for key, sub in params.items():
    out[str(key)] = count_params(sub)
  return out


def forward_flops(cfg, graphdef, abstract_params, batch: int = 1, sigma: float = 1.0) -> float:
  """FLOPs (2 per multiply-add) of one denoiser call D(x; σ) on `batch` images, per XLA."""
  precond = build.make_precond(cfg)
  label_dim = build.label_dim(cfg)
  shape = (batch, cfg.data.resolution, cfg.data.resolution, cfg.data.channels)

  def fn(params, x, sigma, labels):
    class_labels = jax.nn.one_hot(labels, label_dim) if label_dim else None
    return make_denoiser(graphdef, params, precond)(x, sigma, class_labels=class_labels)

  args = (abstract_params, jax.ShapeDtypeStruct(shape, jnp.float32),
          jnp.full((batch,), sigma, jnp.float32), jax.ShapeDtypeStruct((batch,), jnp.int32))
  lowered = jax.jit(fn).lower(*args)
  cost = lowered.cost_analysis()
  if not cost or "flops" not in cost:
    cost = lowered.compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])


def model_info(cfg) -> dict:
  graphdef, params = build.abstract_network(cfg)
  if cfg.model.arch == "multistage":  # one forward per stage, and the sampler's NFE-weighted mean
    from jaxdiff.multistage.info import multistage_info
    ms = multistage_info(cfg)
    return dict(params=count_params(params), params_by_part=params_by_part(params),
                gflops_per_forward=ms["gflops_per_stage"], **ms)
  return dict(params=count_params(params), params_by_part=params_by_part(params),
              gflops_per_forward=forward_flops(cfg, graphdef, params) / 1e9)
