"""Multi-stage EDM on the embedded digits (configs/digits.py + a shared encoder and three decoders).

Small enough to train on a laptop CPU in minutes. The stage boundaries come from
`jaxdiff cluster --config configs/digits.py --stages 3` (Algorithm 1, see docs/multistage.md).
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
  c.model = ml_collections.ConfigDict()
  c.model.arch = "multistage"
  c.model.model_channels = 32             # shared encoder + embedding
  c.model.decoder_channels = (48, 32, 8)  # wide where denoising is hard (low σ), narrow at high σ
  c.model.stage_boundaries = (1.536, 37.53)  # σ, from `jaxdiff cluster` (α 0.9, η 2/255)
  c.model.channel_mult = (1, 2)
  c.model.num_blocks = 2
  c.model.attn_resolutions = (4,)
  c.model.num_groups = 8
  c.model.dropout = 0.1
  c.model.label_dropout = 0.0
  c.model.dtype = "float32"
  c.model.remat = False           # True: recompute each block's activations in the backward pass
  c.model.precond_name = "edm"            # maps the σ boundaries to the network's c_noise

  c.multistage = ml_collections.ConfigDict()
  c.multistage.mode = "stochastic"        # stochastic (one stage per step) | stratified
  return c
