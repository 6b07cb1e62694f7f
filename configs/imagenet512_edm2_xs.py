"""ImageNet 512x512 in latent space, class-conditional EDM2-XS (NVlabs/edm2 preset
`edm2-img512-xs`): the network runs on 4-channel 64x64 latents; 124,713,253 parameters.

The preset: batch 2048, ref_lr 0.0120, decay 70000 batches, dropout 0.00, P_mean −0.4, P_std 1.0,
2048 Mi images; the rest as configs/imagenet64_edm2_xs.py.

The VAE is out of scope: jaxdiff neither encodes images nor decodes latents. data.name must name
a source of pre-encoded latents ([64, 64, 4], scaled as the reference's StabilityVAEEncoder scales
them, i.e. roughly unit variance per channel), and samples are latents that the Stability VAE
(stabilityai/sd-vae-ft-mse) decodes outside jaxdiff. `jaxdiff info` works without any data.
"""

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
  c.data.name = "folder:imagenet512-latents"   # pre-encoded latents (see above)
  c.data.resolution = 64
  c.data.channels = 4
  c.loss.P_mean = -0.4
  c.loss.P_std = 1.0
  c.training.steps = 1_048_576                 # 2048 Mi images at batch 2048
  c.training.lr = 0.0120
  c.edm2.ref_batches = 70_000
  return c
