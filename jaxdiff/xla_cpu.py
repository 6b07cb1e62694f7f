"""XLA CPU settings that the `jaxdiff` commands apply before JAX starts its backends.

jaxlib 0.10 hands each convolution on CPU to YNNPACK ("individual_convolution" fusions). On the
2-core Xeon of docs/bench.md that made the DDPM++ (model_channels 32, batch 32) forward pass
1.27× and its gradient 1.37× slower than XLA's own convolution emitter, so the commands turn it
off. XLA aborts on a flag it does not know, so the setting is only added for the jaxlib minor
version it was measured on. Opt out with JAXDIFF_XLA_CPU_DEFAULTS=0; a flag already present in
XLA_FLAGS is left as the user set it. Library users (notebooks) can call `apply()` themselves
before their first JAX computation.
"""

from __future__ import annotations

import os
from importlib import metadata

FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
MEASURED_ON = (0, 10)  # jaxlib major.minor whose XLA knows these flags


def jaxlib_minor() -> tuple[int, int] | None:
  try:
    parts = metadata.version("jaxlib").split(".")
    return int(parts[0]), int(parts[1])
  except (metadata.PackageNotFoundError, ValueError, IndexError):
    return None


def apply(environ=None, jaxlib_version: tuple[int, int] | None = None) -> list[str]:
  """Adds FLAGS to environ["XLA_FLAGS"] (default os.environ); returns the flags it added."""
  environ = os.environ if environ is None else environ
  if environ.get("JAXDIFF_XLA_CPU_DEFAULTS", "1") == "0":
    return []
  version = jaxlib_version if jaxlib_version is not None else jaxlib_minor()
  if version != MEASURED_ON:
    return []
  current = environ.get("XLA_FLAGS", "")
  added = [f for f in FLAGS if f.split("=")[0] not in current]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
