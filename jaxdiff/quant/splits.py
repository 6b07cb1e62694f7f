"""Where a network's decoder concatenates skip connections: {module-path regex: first half width}.

A decoder block whose input is wider than the running width of the decoder consumes
concat([h, skip], axis=-1); its convs on that input (conv0 after GroupNorm/SiLU, which act per
channel, and the 1x1 skip projection) get one activation range per half (Q-Diffusion). The widths
are read off the built modules, in forward order, for the three U-Net families.
"""

from __future__ import annotations

import re


def _entry(prefix: str, n: int) -> dict:
  return {re.escape(f"{prefix}/{name}"): n for name in ("conv0", "skip")}


def concat_splits(net) -> dict:
  name = type(net).__name__
  if hasattr(net, "_unquantized_type"):
    name = net._unquantized_type.__name__
  if name == "UNet":  # jaxdiff.nets.unet
    return _unet(net)
  if name in ("SongUNet", "DhariwalUNet"):
    return _dec_dict(net)
  return {}  # unknown family (e.g. multi-stage): one range per conv input


def _unet(net) -> dict:
  out = {}
  c = net.mid[2].conv1.out_features
  for i, layer in enumerate(net.up):
    if layer is None:
      continue
    if hasattr(layer, "norm0"):
      cin = layer.conv0.in_features
      if cin > c:
        out.update(_entry(f"up/{i}", c))
      c = layer.conv1.out_features
  return out


def _dec_dict(net) -> dict:
  out = {}
  c = None
  for key in net.dec_order:
    block = net.dec[key]
    if "aux" in key:
      continue
    if c is not None and block.in_channels > c:
      out.update(_entry(f"dec/{key}", c))
    c = block.out_channels
  return out
