"""XLA CPU settings that the `jaxdiff` commands apply before JAX starts its backends.

jaxlib 0.10 hands each convolution on CPU to YNNPACK ("individual_convolution" fusions). On the
2-core Xeon of docs/bench.md that made the DDPM++ (model_channels 32, batch 32) forward pass
1.27× and its gradient 1.37× slower than XLA's own convolution emitter, so the commands turn it
off. XLA aborts on a flag it does not know, so the setting is only added for the jaxlib minor
version it was measured on. Opt out with JAXDIFF_XLA_CPU_DEFAULTS=0; a flag already present in
XLA_FLAGS is left as the user set it. Library users (notebooks) can call `apply()` themselves
before their first JAX computation.

Sampler programs (forward passes only) are compiled with YNNPACK's elementwise fusions as well,
through per-program compiler options (`sampler_compiler_options`), not XLA_FLAGS: on the digits
U-Net's forward pass they were 20 % faster with bitwise-equal outputs, while its train step was
5 % slower with them and DDPM++'s forward within 2 % (docs/bench.md), so train steps keep the
process-wide setting.
"""

from __future__ import annotations

import os
from importlib import metadata

FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
MEASURED_ON = (0, 10)  # jaxlib major.minor whose XLA knows these flags
# The YNNPACK fusion types of the setting above (jaxlib 0.10's default list less individual
# convolutions), plus elementwise fusions, as XLA's enum names: compiler options replace the list.
SAMPLER_YNN_TYPES = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_REDUCE",
                     "LIBRARY_FUSION_TYPE_ELTWISE")


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


def sampler_compiler_options(backend: str, environ=None,
                             jaxlib_version: tuple[int, int] | None = None) -> dict:
  """jax.jit compiler_options for a sampler program on `backend` (jax.default_backend()).

  Empty unless the backend is the CPU and the process runs with FLAGS as `apply` set them (not
  opted out, the measured jaxlib, no YNNPACK setting of the user's own in XLA_FLAGS)."""
  environ = os.environ if environ is None else environ
  version = jaxlib_version if jaxlib_version is not None else jaxlib_minor()
  if (backend != "cpu" or version != MEASURED_ON
      or environ.get("JAXDIFF_XLA_CPU_DEFAULTS", "1") == "0"):
    return {}
  settings = [f for f in environ.get("XLA_FLAGS", "").split()
              if f.startswith("--xla_cpu_experimental_ynn_fusion_type")]
  if settings != [FLAGS[0]]:
    return {}
  return {"xla_cpu_experimental_ynn_fusion_type": ",".join(SAMPLER_YNN_TYPES)}
