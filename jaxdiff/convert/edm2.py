"""Importing weights of the reference EDM2 network (NVlabs/edm2 training/networks_edm2.Precond).

The reference Precond's state dict names tensors by module path (`unet.enc.64x64_conv.weight`,
`unet.dec.8x8_in0.emb_gain`, `logvar_linear.weight`), and jaxdiff's EDM2Net uses the same paths
(jaxdiff/nets/edm2.py), so the mapping is by name; layouts change as for EDM:

  MPConv convolution weight  OIHW [out, in, kh, kw]  ->  HWIO [kh, kw, in, out]
  MPConv linear weight       [out, in]               ->  [in, out]
  gains (emb_gain, out_gain) []                      ->  []

The four MPFourier buffers (`unet.emb_fourier.{freqs,phases}`, `logvar_fourier.{freqs,phases}`)
are constants of the jaxdiff network: `config_updates` extracts them as
`model.{emb,logvar}_fourier_{freqs,phases}` so the caller builds the network with them, and
`import_state_dict` checks that they agree. A reference network pickle holds the Precond as
`data['ema']`; export it with
`np.savez(f, **{k: v.float().cpu().numpy() for k, v in data['ema'].state_dict().items()})`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from flax import nnx

from jaxdiff.convert.edm import (_to_reference, check_fit, load_state_dict,  # noqa: F401
                                 params_from)
from jaxdiff.nets.edm2 import MPFourier
from jaxdiff.pytree import param_shapes

# state-dict buffer -> (config.model key, MPFourier attribute)
BUFFERS = {
    "unet.emb_fourier.freqs": ("emb_fourier_freqs", "freqs"),
    "unet.emb_fourier.phases": ("emb_fourier_phases", "phases"),
    "logvar_fourier.freqs": ("logvar_fourier_freqs", "freqs"),
    "logvar_fourier.phases": ("logvar_fourier_phases", "phases"),
}


def is_edm2_state_dict(state_dict: Mapping) -> bool:
  return "unet.out_gain" in state_dict or "logvar_linear.weight" in state_dict


def config_updates(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Values for `config.model` that live in the state dict: the MPFourier frequencies / phases."""
  out = {}
  for name, (key, _) in BUFFERS.items():
    if name in state_dict:
      out[key] = [float(v) for v in np.asarray(state_dict[name], np.float32).ravel()]
  return out


def _buffers(net) -> dict[str, np.ndarray]:
  """The reference's buffers that the jaxdiff network implies (its MPFourier constants)."""
  out = {}
  for path, m in nnx.iter_modules(net):
    if isinstance(m, MPFourier):
      prefix = ".".join(str(p) for p in path)
      out[prefix + ".freqs"] = np.asarray(m.freqs, np.float32)
      out[prefix + ".phases"] = np.asarray(m.phases, np.float32)
  return out


def export_state_dict(net, params=None) -> dict[str, np.ndarray]:
  """jaxdiff EDM2 network (or its `params`) -> a state dict in the reference Precond's names and
  layouts, buffers included."""
  state = nnx.state(net, nnx.Param) if params is None else params
  out = {}
  for path, var in nnx.to_flat_state(state):
    out[".".join(str(p) for p in path)] = _to_reference(np.asarray(var[...], np.float32))
  out.update(_buffers(net))
  return out


def import_state_dict(net, state_dict: Mapping[str, np.ndarray]) -> nnx.State:
  """Reference Precond state dict -> jaxdiff params (shaped like `nnx.state(net, nnx.Param)`).

  Raises JaxdiffError naming missing, unexpected and mis-shaped keys, and MPFourier buffers that
  differ from the network's constants (build it with `config_updates(state_dict)` applied)."""
  expected = param_shapes(net)
  buffers = _buffers(net)
  missing = sorted(n for n in list(expected) + list(buffers) if n not in state_dict)
  unexpected = sorted(k for k in state_dict if k not in expected and k not in buffers)
  misshaped, wrong = [], []
  for n, shape in expected.items():
    if n in state_dict:
      got = tuple(np.shape(state_dict[n]))
      want = tuple(_to_reference(np.zeros(shape, np.bool_)).shape)
      if got != want:
        misshaped.append(f"{n} {list(got)} (config wants {list(want)})")
  for n, value in buffers.items():
    if n in state_dict:
      got = np.asarray(state_dict[n], np.float32)
      if got.shape != value.shape:
        misshaped.append(f"{n} {list(got.shape)} (config wants {list(value.shape)})")
      elif not np.array_equal(got, value):
        wrong.append(n)
  check_fit("EDM2 network", "model.model_channels / channel_mult / num_blocks / attn_resolutions / "
            "data.num_classes / data.channels", missing, unexpected, misshaped, wrong)
  return params_from(net, {n: state_dict[n] for n in expected})
