"""CIFAR-10 32x32 multi-stage EDM (Zhang et al., CVPR 2024): DDPM++ with the embedding and encoder
(128 channels) shared, and decoders of 192 / 128 / 16 channels (× channel_mult) for the stages
σ ∈ [0, 2.5103), [2.5103, 7.6577), [7.6577, ∞). 128.79 M parameters (shared/REFERENCE.md §2).

Everything else is configs/cifar10_ddpmpp.py (EDM training, Heun 18 steps).
"""

import importlib.util
import os

import ml_collections


def _base():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_ddpmpp.py")
  spec = importlib.util.spec_from_file_location("_jaxdiff_cifar10_ddpmpp_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  c = _base()
  augment_dim = c.model.augment_dim
  c.model = ml_collections.ConfigDict()
  c.model.arch = "multistage"
  c.model.model_channels = 128                   # shared encoder + embedding
  c.model.decoder_channels = (192, 128, 16)      # stage 0 (low σ) .. stage 2 (high σ)
  c.model.stage_boundaries = (2.5103, 7.6577)    # σ
  c.model.channel_mult = (2, 2, 2)
  c.model.channel_mult_emb = 4
  c.model.num_blocks = 4
  c.model.attn_resolutions = (16,)
  c.model.num_groups = 16
  c.model.dropout = 0.13
  c.model.label_dropout = 0.0
  c.model.augment_dim = augment_dim
  c.model.dtype = "float32"
  c.model.remat = False           # True: recompute each block's activations in the backward pass
  c.model.precond_name = "edm"                   # maps the σ boundaries to c_noise

  c.loss.P_mean = -1.2
  c.loss.P_std = 1.2

  c.multistage = ml_collections.ConfigDict()
  c.multistage.mode = "stochastic"               # stochastic (the reference) | stratified
  return c
