"""What a quantized model is: bits, group size, activations (a frozen, hashable spec)."""

from __future__ import annotations

import dataclasses

from jaxdiff.errors import JaxdiffError


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """bits 8 or 4 (integer weights, symmetric absmax); group_size G: one scale per G input channels
  and output channel (None: one per output channel); activations: int8 static-range inputs of
  every conv / linear (W8A8; needs calibration)."""
  bits: int = 8
  group_size: int | None = None
  activations: bool = False

  def __post_init__(self):
    if self.bits not in (4, 8):
      raise JaxdiffError(f"--bits {self.bits}: use 8 or 4")
    if self.group_size is not None and self.group_size < 1:
      raise JaxdiffError(f"--group-size {self.group_size}: must be a positive integer")
    if self.activations and self.bits != 8:
      # qwix's quantized conv needs activations and weights of one type, and int4 activations are
      # far outside what diffusion PTQ tolerates.
      raise JaxdiffError("--activations needs --bits 8 (W8A8)")
    if self.activations and self.group_size is not None:
      raise JaxdiffError("--activations with --group-size: qwix has no sub-channel convolution "
                         "with quantized activations; drop one of them")

  @property
  def name(self) -> str:
    s = f"W{self.bits}"
    if self.group_size:
      s += f"g{self.group_size}"
    if self.activations:
      s += "A8"
    return s

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d) -> "QuantSpec":
    d = dict(d)
    return cls(bits=int(d["bits"]), group_size=None if d.get("group_size") in (None, 0) else
               int(d["group_size"]), activations=bool(d.get("activations", False)))
