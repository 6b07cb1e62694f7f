"""XLA CPU settings that the `jaxdiff` commands apply before JAX starts its backends.

jaxlib 0.10 hands each convolution on CPU to YNNPACK ("individual_convolution" fusions). On the
2-core Xeon of docs/bench.md that made the DDPM++ (model_channels 32, batch 32) forward pass
1.27× and its gradient 1.37× slower than XLA's own convolution emitter, so the commands turn it
off. XLA aborts on a flag it does not know, so the setting is only added for the jaxlib minor
version it was measured on. Opt out with JAXDIFF_XLA_CPU_DEFAULTS=0; a flag already present in
XLA_FLAGS is left as the user set it. Library users (notebooks) can call `apply()` themselves
before their first JAX computation.

Programs can also be compiled with YNNPACK's elementwise fusions, through per-program compiler
options (`eltwise_compiler_options`), not XLA_FLAGS, where the config asks:
`sampler.cpu_eltwise_fusions` for sampler programs, `training.cpu_eltwise_fusions` for the train
step. Whether they help depends on the network and the CPU (docs/bench.md): the digits U-Net's
sampler was 20 % faster on an Intel Xeon and 3 % on an AVX2 AMD EPYC, its train step 5 % slower;
DDPM++'s train step 6-12 % faster on the Xeon but 3 % slower on the EPYC, its sampler 2 % and 15 %
slower. So configs/digits.py turns them on for sampling only.
"""

from __future__ import annotations

import os
from importlib import metadata

FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
MEASURED_ON = (0, 10)  # jaxlib major.minor whose XLA knows these flags
# The YNNPACK fusion types of the setting above (jaxlib 0.10's default list less individual
# convolutions), plus elementwise fusions, as XLA's enum names: compiler options replace the list.
ELTWISE_YNN_TYPES = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_REDUCE",
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


def eltwise_compiler_options(backend: str, environ=None,
                             jaxlib_version: tuple[int, int] | None = None) -> dict:
  """jax.jit compiler_options adding YNNPACK's elementwise fusions to a program on `backend`
  (jax.default_backend()): every sampler program, and the train steps of configs that ask.

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
  return {"xla_cpu_experimental_ynn_fusion_type": ",".join(ELTWISE_YNN_TYPES)}
