"""A consistency model on the embedded digits (configs/digits.py + a `consistency` section).

mode "ct" trains from scratch in the iCT recipe; "tune" starts from a trained EDM workdir
(`--config.consistency.init_from=DIR`); "distill" distills one (`--config.consistency.teacher=DIR`).
Sample with `jaxdiff sample --workdir DIR --solver consistency --steps 1` (or 2, 4: multistep).
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
  c.consistency = ml_collections.ConfigDict()
  c.consistency.mode = "ct"          # ct | tune | distill
  c.consistency.init_from = ""       # tune (and optionally distill): an EDM workdir's EMA weights
  c.consistency.teacher = ""         # distill: the EDM teacher's workdir
  # iCT (Song & Dhariwal 2024) constants: Karras grid, log-normal index law, doubling curriculum.
  c.consistency.sigma_min = 0.002    # f(x, sigma_min) = x exactly
  c.consistency.sigma_max = 80.0
  c.consistency.rho = 7.0
  c.consistency.P_mean = -1.1
  c.consistency.P_std = 2.0
  c.consistency.s0 = 10              # discretisation steps at the start ...
  c.consistency.s1 = 1280            # ... doubled up to this over training.steps
  c.consistency.huber_c = None       # pseudo-Huber c; None: 0.00054·sqrt(64) for 8x8x1
  c.consistency.sample_sigmas = (80.0, 0.821)  # 2-step noise levels (iCT's CIFAR-10 choice)

  c.sampler.solver = "consistency"
  c.sampler.num_steps = 1
  c.training.steps = 3000
  c.training.lr = 1e-3
  c.training.ema_halflife_images = 20_000
  return c
