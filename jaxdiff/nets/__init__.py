"""Networks. `build_network` is the only place that maps the model options to a network class.

The options are a plain dict, `NetworkSpec.as_dict()` (made by build from `config.model`); no
module here reads a config."""

from __future__ import annotations

import importlib

from jaxdiff.errors import JaxdiffError

# arch name -> "module:function"; each function takes (options, *, img_resolution, img_channels,
# label_dim, rngs), `options` a mapping read with .get / [key], and returns an nnx.Module
# following docs/ARCHITECTURE.md.
ARCHS = {
    "unet": "jaxdiff.nets.unet:build",
    "ddpmpp": "jaxdiff.nets.songunet:build_ddpmpp",
    "ncsnpp": "jaxdiff.nets.songunet:build_ncsnpp",
    "adm": "jaxdiff.nets.dhariwal:build_adm",
    "multistage": "jaxdiff.nets.multistage:build_multistage",
    "edm2": "jaxdiff.nets.edm2:build_edm2",
    "discriminator": "jaxdiff.nets.discriminator:build",  # d(x_σ, σ): logits [B], not an image
}


def build_network(options, *, img_resolution: int, img_channels: int, label_dim: int, rngs):
  arch = options["arch"]
  if arch not in ARCHS:
    raise JaxdiffError(f"unknown model.arch {arch!r}; choose one of {', '.join(sorted(ARCHS))}")
  module_name, fn_name = ARCHS[arch].split(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name == module_name:
      raise JaxdiffError(f"model.arch {arch!r} is not available yet in this version") from None
    raise
  return getattr(module, fn_name)(options, img_resolution=img_resolution,
                                  img_channels=img_channels, label_dim=label_dim, rngs=rngs)
