"""ImageNet 64x64, class-conditional ADM (the reference's DhariwalUNet, `--arch=adm --precond=edm`).

The reference's settings (shared/REFERENCE.md; its README's imagenet-64x64-cond-adm run):
296 M parameters, batch 4096, lr 1e-4, EMA half-life 50 M images, no augmentation, 2500 M images.
The reference trains in fp16 with loss scaling 100; here the network computes in bfloat16 with
float32 parameters (no loss scaling needed): use --config.model.dtype=float32 on CPU.
Variants: --config.data.num_classes=0 (unconditional), --config.precond.name=iddpm (the iDDPM
parameterisation of the original ADM; the network then outputs 6 channels).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.name = "tfds:imagenet_resized/64x64"
  c.data.resolution = 64
  c.data.channels = 3
  c.data.num_classes = 1000       # 0 = unconditional
  c.data.xflip = False
  c.data.augment_p = 0.0          # the reference trains ImageNet without augmentation

  c.model = ml_collections.ConfigDict()
  c.model.arch = "adm"
  c.model.model_channels = 192
  c.model.channel_mult = (1, 2, 3, 4)
  c.model.channel_mult_emb = 4
  c.model.num_blocks = 3
  c.model.attn_resolutions = (32, 16, 8)
  c.model.channels_per_head = 64
  c.model.dropout = 0.10
  c.model.label_dropout = 0.0
  c.model.augment_dim = 0
  c.model.dtype = "bfloat16"
  c.model.remat = False           # True: recompute each block's activations in the backward pass

  c.precond = ml_collections.ConfigDict()
  c.precond.name = "edm"
  c.precond.sigma_data = 0.5

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "edm"
  c.loss.P_mean = -1.2
  c.loss.P_std = 1.2

  c.sampler = ml_collections.ConfigDict()
  c.sampler.solver = "heun"        # the paper's ImageNet-64 stochastic sampler (511 NFE)
  c.sampler.num_steps = 256
  c.sampler.sigma_min = 0.002
  c.sampler.sigma_max = 80.0
  c.sampler.rho = 7.0
  c.sampler.s_churn = 40.0
  c.sampler.s_min = 0.05
  c.sampler.s_max = 50.0
  c.sampler.s_noise = 1.003

  c.training = ml_collections.ConfigDict()
  c.training.steps = 610_352       # 2500 M images at batch 4096
  c.training.batch_size = 4096
  c.training.lr = 1e-4
  c.training.lr_rampup_images = 10_000_000
  c.training.ema_halflife_images = 50_000_000
  c.training.ema_rampup_ratio = 0.05
  c.training.checkpoint_every = 2_500
  c.training.keep_checkpoints = 2
  c.training.log_every = 100
  c.training.sample_every = 10_000
  c.training.sample_grid = 64
  c.training.seed = 0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.beta1 = 0.9
  c.optimizer.beta2 = 0.999
  c.optimizer.eps = 1e-8
  return c
