"""Importing weights of the reference PyTorch EDM networks (NVlabs/edm) into jaxdiff parameters.

The reference's state dicts name tensors by module path: `model.enc.32x32_conv.weight` for an
EDMPrecond / VPPrecond / VEPrecond / iDDPMPrecond wrapper around SongUNet or DhariwalUNet. The
jaxdiff networks (jaxdiff/nets/songunet.py, dhariwal.py) use the same module paths, so the mapping
is by name; only layouts differ:

  convolution weight  OIHW [out, in, kh, kw]  ->  HWIO [kh, kw, in, out]
  linear weight       [out, in]               ->  [in, out]
  biases, GroupNorm   [C]                     ->  [C]

Buffers of the reference are checked, not imported: each up/down convolution's
`resample_filter` must equal the one the config builds, and NCSN++'s `map_noise.freqs` (random
Fourier frequencies) must equal `model.fourier_freqs` (`config_updates` extracts them so the
caller can put them into the config before building). The iDDPM preconditioner's `u` table is
recomputed by jaxdiff and ignored.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np
from flax import nnx

from jaxdiff.errors import JaxdiffError
from jaxdiff.nets.layers import Conv2d, resample_kernel
from jaxdiff.pytree import param_shapes, unflatten

# Buffers of the preconditioning wrappers that jaxdiff recomputes (iDDPMPrecond's sigma table).
IGNORED_KEYS = ("u",)
FREQS_KEY = "map_noise.freqs"


# ----------------------------------------------------------------------------------------------
# Reading files.

def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads an .npz (arrays keyed by state-dict names) or, when torch is installed, a .pt/.pth."""
  if not os.path.isfile(path):
    raise JaxdiffError(f"--src {path!r} does not exist; pass an .npz of the reference's state dict")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npz":
    with np.load(path, allow_pickle=False) as f:
      return {k: np.asarray(f[k]) for k in f.files}
  if ext in (".pt", ".pth"):
    try:
      import torch  # optional dependency
    except ImportError:
      raise JaxdiffError(f"reading {path!r} needs torch; install it, or save the state dict as an "
                         ".npz: np.savez(f, **{k: v.cpu().numpy() for k, v in sd.items()})") from None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
      obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
      raise JaxdiffError(f"{path!r} does not hold a state dict; save `net.state_dict()` of the "
                         "reference's EDMPrecond network with torch.save")
    return {k: v.detach().cpu().float().numpy() for k, v in obj.items() if hasattr(v, "numpy")}
  raise JaxdiffError(f"--src {path!r}: use an .npz (or a .pt/.pth state dict with torch installed)")


def _prefix(state_dict: Mapping[str, np.ndarray]) -> str:
  """'model.' for a preconditioner's state dict, '' for the bare network's."""
  return "model." if any(k.startswith("model.") for k in state_dict) else ""


def config_updates(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Values for `config.model` that live in the state dict: NCSN++'s Fourier frequencies."""
  key = _prefix(state_dict) + FREQS_KEY
  if key in state_dict:
    return {"fourier_freqs": [float(v) for v in np.asarray(state_dict[key], np.float32).ravel()]}
  return {}


# ----------------------------------------------------------------------------------------------
# Layout changes.

def _to_reference(a: np.ndarray) -> np.ndarray:
  if a.ndim == 4:  # HWIO -> OIHW
    return np.transpose(a, (3, 2, 0, 1))
  if a.ndim == 2:  # [in, out] -> [out, in]
    return a.T
  return a


def _from_reference(a: np.ndarray) -> np.ndarray:
  if a.ndim == 4:  # OIHW -> HWIO
    return np.transpose(a, (2, 3, 1, 0))
  if a.ndim == 2:
    return a.T
  return a


def _buffers(net) -> dict[str, np.ndarray]:
  """The reference's buffers that the jaxdiff network implies, in the reference's layout."""
  out = {}
  for path, m in nnx.iter_modules(net):
    if isinstance(m, Conv2d) and (m.up or m.down):
      out[".".join(str(p) for p in path + ("resample_filter",))] = (
          resample_kernel(m.resample_filter)[None, None])
  freqs = getattr(net, "fourier_freqs", None)
  if freqs is not None:
    out[FREQS_KEY] = np.asarray(freqs, np.float32)
  return out


# ----------------------------------------------------------------------------------------------
# The two directions.

def export_state_dict(net, params=None, prefix: str = "model.") -> dict[str, np.ndarray]:
  """jaxdiff network (or its `params`) -> a state dict in the reference's names and layouts."""
  state = nnx.state(net, nnx.Param) if params is None else params
  out = {}
  for path, var in nnx.to_flat_state(state):
    out[prefix + ".".join(str(p) for p in path)] = _to_reference(np.asarray(var[...], np.float32))
  for name, value in _buffers(net).items():
    out[prefix + name] = value
  return out


def import_state_dict(net, state_dict: Mapping[str, np.ndarray]) -> nnx.State:
  """Reference state dict -> jaxdiff params (an nnx.State shaped like `nnx.state(net, nnx.Param)`).

  Raises JaxdiffError naming missing, unexpected and mis-shaped keys, and buffers whose values
  disagree with the network (resampling filter, Fourier frequencies).
  """
  prefix = _prefix(state_dict)
  names = {k[len(prefix):]: k for k in state_dict if k.startswith(prefix) and k not in IGNORED_KEYS}
  foreign = sorted(k for k in state_dict if not k.startswith(prefix) and k not in IGNORED_KEYS)
  expected = param_shapes(net)
  buffers = _buffers(net)

  missing = sorted(prefix + n for n in list(expected) + list(buffers) if n not in names)
  unexpected = sorted(foreign + [k for n, k in names.items()
                                 if n not in expected and n not in buffers])
  misshaped, wrong = [], []
  for n, shape in expected.items():
    if n in names:
      ref_shape = tuple(np.shape(state_dict[names[n]]))
      want = tuple(_to_reference(np.zeros(shape, np.bool_)).shape)
      if ref_shape != want:
        misshaped.append(f"{names[n]} {list(ref_shape)} (config wants {list(want)})")
  for n, value in buffers.items():
    if n in names:
      got = np.asarray(state_dict[names[n]], np.float32)
      if got.shape != value.shape:
        misshaped.append(f"{names[n]} {list(got.shape)} (config wants {list(value.shape)})")
      elif not np.array_equal(got, value):
        wrong.append(names[n])

  check_fit("network", "model.arch / model.* / data.num_classes / model.augment_dim", missing,
            unexpected, misshaped, wrong)
  return params_from(net, {n: state_dict[names[n]] for n in expected})


def check_fit(what: str, hint: str, missing, unexpected, misshaped, wrong) -> None:
  """One JaxdiffError line listing what of a state dict does not fit the config's `what`."""
  problems = []
  for label, items in (("missing", missing), ("unexpected", unexpected),
                       ("mis-shaped", misshaped), ("differing from the config", wrong)):
    if items:
      shown = ", ".join(items[:4]) + (f", ... ({len(items)} in all)" if len(items) > 4 else "")
      problems.append(f"{label}: {shown}")
  if problems:
    raise JaxdiffError(f"the state dict does not fit the config's {what} (" + "; ".join(problems)
                       + f"); check {hint}")


def params_from(net, arrays: Mapping[str, np.ndarray]) -> nnx.State:
  """A copy of `net`'s parameters (`net` stays untouched) with {dotted name: reference array}."""
  params = jax.tree.map(lambda x: x, nnx.state(net, nnx.Param))
  # np.array, not np.ascontiguousarray: that would make scalar gains (EDM2) [1]-shaped.
  pure = unflatten({n: np.array(_from_reference(np.asarray(a, np.float32)), order="C")
                    for n, a in arrays.items()}, sep=".")
  nnx.replace_by_pure_dict(params, pure)
  return params
