"""jaxdiff: diffusion models in JAX / Flax NNX (EDM, multi-stage, fast samplers)."""

__version__ = "0.1.0"


def load(workdir: str, ema: bool = True):
  """The latest checkpoint of `workdir` as a `jaxdiff.model.Model` (EMA weights unless ema=False)."""
  from jaxdiff.model import load as _load
  return _load(workdir, ema=ema)
