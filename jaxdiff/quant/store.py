"""Quantized weights on disk: qwix's integer qvalues and float scales as one orbax item.

A quantized workdir (`jaxdiff quantize`) holds `quantized/` beside its ordinary checkpoint; its
config.json's `quant` record names the QuantSpec. The restore target is the abstract quantized
tree (`core.abstract_quantized`), so int8 / int4 arrays come back with their dtypes.
"""

from __future__ import annotations

import os

import jax

from jaxdiff.errors import JaxdiffError
from jaxdiff.quant.core import abstract_quantized
from jaxdiff.quant.spec import QuantSpec

ITEM = "quantized"


def save_quantized(workdir: str, qparams) -> None:
  import orbax.checkpoint as ocp
  from flax import nnx
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(os.path.abspath(os.path.join(workdir, ITEM)), nnx.to_pure_dict(qparams))
  ckpt.wait_until_finished()


def spec_of(cfg_dict: dict) -> QuantSpec | None:
  rec = cfg_dict.get("quant")
  return None if not rec else QuantSpec.from_dict(rec)


def load_quantized(workdir: str, exp, graphdef, abstract_params, spec: QuantSpec):
  """(qgraphdef, qparams) of a quantized workdir: integer weights and scales as stored."""
  import orbax.checkpoint as ocp
  from flax import nnx
  path = os.path.abspath(os.path.join(workdir, ITEM))
  if not os.path.isdir(path):
    raise JaxdiffError(f"{workdir!r} records {spec.name} quantization but has no {ITEM}/ folder; "
                       "quantize again with `jaxdiff quantize`")
  qgraphdef, abstract_q = abstract_quantized(graphdef, abstract_params, spec,
                                             shape=exp.data.shape, label_dim=exp.label_dim)
  target = nnx.to_pure_dict(abstract_q)
  restored = ocp.StandardCheckpointer().restore(path, target)
  nnx.replace_by_pure_dict(abstract_q, jax.tree.map(jax.numpy.asarray, restored))
  return qgraphdef, abstract_q
