"""A lightweight digits student distilled from a trained configs/digits.py run (issue 14).

The student is the digits UNet at half the width (model_channels 16) without the 4x4 attention:
177,665 parameters, 0.235 of the teacher's 755,329 (half width with attention is 0.252, over the
1/4 that `jaxdiff train` checks and refuses). It trains on the digits data with the mixed loss of jaxdiff/families/student.py: half
matching the teacher's D(x; σ) at σ from the training distribution, half the ordinary EDM
denoising loss. Sampling as the teacher's (iPNDM, 10 NFE), so the two compare at the same NFE.

  jaxdiff train --config configs/digits_student.py --workdir runs/student \\
      --config.student.teacher=runs/digits
"""

import importlib.util
import os

import ml_collections


def _base():
  # Loaded by path (config files are read by path, not as a package).
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py")
  spec = importlib.util.spec_from_file_location("_jaxdiff_digits_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  c = _base()
  c.model.model_channels = 16
  c.model.attn_resolutions = ()
  c.student = ml_collections.ConfigDict()
  c.student.teacher = ""           # a trained workdir of the same data (required)
  c.student.distill_weight = 0.5   # w: share of the distillation term; 1 - w the denoising loss
  return c
