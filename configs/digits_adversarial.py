"""Adversarial fine-tuning of a trained digits denoiser (jaxdiff/families/adversarial.py).

`jaxdiff train --config configs/digits_adversarial.py --config.adversarial.init=DIR --workdir ADV`
starts from DIR's EMA weights (a configs/digits.py run: the model section must be DIR's) and trains
the EDM denoising loss plus λ = adversarial.weight times DDGAN's non-saturating generator loss on
the denoiser's outputs, against a discriminator (its own network, Adam, R1) trained jointly. With
--config.adversarial.weight=0 the same run is the plain loss continued: the control.
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
  c.adversarial = ml_collections.ConfigDict()
  c.adversarial.init = ""            # trained digits workdir whose EMA weights start the denoiser
  c.adversarial.weight = 0.01        # λ of the adversarial term (untuned at this scale)
  c.adversarial.r1_gamma = 0.02      # DDGAN's CIFAR-10 r1_gamma
  c.adversarial.disc_lr = 1.25e-4    # DDGAN's CIFAR-10 lr_d, Adam betas (0.5, 0.9)
  c.adversarial.disc_beta1 = 0.5
  c.adversarial.disc_beta2 = 0.9
  c.adversarial.sigma_min = 0.002    # σ' of the discriminator's input: the sampler's range
  c.adversarial.sigma_max = 80.0
  # The discriminator network: configs/digits_discriminator.py's (jaxdiff/nets/discriminator.py).
  c.adversarial.disc = ml_collections.ConfigDict()
  c.adversarial.disc.model_channels = 32
  c.adversarial.disc.channel_mult = (1, 2)
  c.adversarial.disc.num_blocks = 1
  c.adversarial.disc.dropout = 0.0
  c.adversarial.disc.dtype = "float32"

  # Fine-tuning: a lower constant lr from the base's EMA, 800 steps = 51,200 extra images.
  c.training.lr = 5e-4
  c.training.lr_rampup_images = 0
  c.training.steps = 800
  c.training.checkpoint_every = 400
  c.training.sample_every = 0
  return c
