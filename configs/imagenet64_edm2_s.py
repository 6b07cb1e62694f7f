"""ImageNet 64x64, class-conditional EDM2-S (NVlabs/edm2 preset `edm2-img64-s`): 192 channels,
280,209,381 parameters, ref_lr 0.0100; everything else as configs/imagenet64_edm2_xs.py (batch 2048,
decay 35000 batches, dropout 0.00, P_mean −0.8, P_std 1.6, 1024 Mi images)."""

import importlib.util
import os


def _base():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet64_edm2_xs.py")
  spec = importlib.util.spec_from_file_location("_jaxdiff_imagenet64_edm2_xs_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  c = _base()
  c.model.model_channels = 192
  c.training.lr = 0.0100
  return c
