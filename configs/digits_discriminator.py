"""A discriminator for discriminator guidance on the embedded digits (configs/digits.py's data).

Trains d(x_σ, σ) to tell diffused digits (1) from diffused samples of a trained model (0):
`jaxdiff train --config configs/digits_discriminator.py
  --config.discriminator.model=DIR --config.discriminator.samples=FILE.npz --workdir DISC`
(the samples from `jaxdiff sample --workdir DIR`). Network: jaxdiff/nets/discriminator.py; loss and
the reference's σ sampling: jaxdiff/discriminator.py.
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
  c.model.arch = "discriminator"
  c.model.model_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.num_blocks = 1
  c.model.dropout = 0.0
  c.model.dtype = "float32"

  c.discriminator = ml_collections.ConfigDict()
  c.discriminator.model = ""           # workdir of the trained diffusion model being refined
  c.discriminator.samples = ""         # npz of its samples (`jaxdiff sample`): the label-0 data
  c.discriminator.sigma_min = 0.0010005  # the reference's t in [1e-5, 1] of its VP SDE, as σ
  c.discriminator.sigma_max = 152.17
  c.discriminator.weight = 1.0         # default guidance weight w when sampling with it

  # The reference: Adam, lr 3e-4, batch 128 (half real, half generated per shuffled batch).
  c.training.lr = 3e-4
  c.training.lr_rampup_images = 0
  c.training.batch_size = 128
  c.training.steps = 2000
  c.training.sample_every = 0          # a discriminator makes no images
  return c
