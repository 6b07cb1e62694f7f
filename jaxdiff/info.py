"""Model size and cost from a config, without materialising weights: parameter counts per part
and forward-pass FLOPs from XLA's cost analysis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import families
from jaxdiff.denoiser import make_denoiser


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def params_by_part(params) -> dict:
  """Parameter count of each top-level submodule (e.g. encoder / decoders / embedding)."""
  out = {}
  for key, sub in params.items():
    out[str(key)] = count_params(sub)
  return out


def xla_flops(fn, *args) -> float:
  """FLOPs of `fn(*args)` per XLA's cost analysis (from the lowering, else the compiled program);
  args may be ShapeDtypeStructs: nothing is materialised."""
  lowered = jax.jit(fn).lower(*args)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  if not cost or "flops" not in cost:
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def forward_flops(exp, graphdef, abstract_params, batch: int = 1, sigma: float = 1.0,
                  stage: int | None = None) -> float:
  """FLOPs (2 per multiply-add) of one denoiser call D(x; σ) on `batch` images, per XLA
  (through `stage`'s decoder for a multi-stage network)."""
  label_dim = exp.label_dim

  def fn(params, x, sigma, labels):
    class_labels = jax.nn.one_hot(labels, label_dim) if label_dim else None
    return make_denoiser(graphdef, params, exp.precond, stage=stage)(x, sigma,
                                                                     class_labels=class_labels)

  return xla_flops(fn, abstract_params, jax.ShapeDtypeStruct((batch,) + exp.data.shape, jnp.float32),
                   jnp.full((batch,), sigma, jnp.float32), jax.ShapeDtypeStruct((batch,), jnp.int32))


def model_info(exp) -> dict:
  """Parameter counts and forward GFLOPs of the Experiment `exp`, plus its family's own figures
  (multi-stage: one forward per stage and the sampler's NFE-weighted mean)."""
  graphdef, params = families.abstract_network(exp)
  out = dict(params=count_params(params), params_by_part=params_by_part(params))
  family = families.of(exp)
  if family.info is not None:
    return dict(out, **family.info(exp))
  return dict(out, gflops_per_forward=forward_flops(exp, graphdef, params) / 1e9)
