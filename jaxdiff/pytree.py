"""Nested dicts of arrays <-> flat {"a/b/c": leaf} dicts: the one pair of flatten helpers (weight
files of the eval networks, the reference-weight importers' key lists)."""

from __future__ import annotations


def flatten(tree, sep: str = "/", prefix: str = "") -> dict:
  """{k: {j: leaf}} -> {"k<sep>j": leaf}; keys are made strings (list indices too)."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, sep, key + sep))
    else:
      out[key] = v
  return out


def unflatten(flat: dict, sep: str = "/") -> dict:
  """The inverse of `flatten` (keys stay strings)."""
  tree = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split(sep)
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def param_shapes(net, sep: str = ".") -> dict:
  """{"enc.32x32_conv.weight": shape} for every nnx.Param of `net` (abstract is fine)."""
  from flax import nnx
  pure = nnx.to_pure_dict(nnx.state(net, nnx.Param))
  return {k: tuple(v.shape) for k, v in flatten(pure, sep).items()}
