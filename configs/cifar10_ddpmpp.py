"""CIFAR-10 32x32 with DDPM++ (the reference's SongUNet, `--arch=ddpmpp --precond=edm`), EDM training.

The reference's defaults (shared/REFERENCE.md): unconditional, augmentation conditioning on
(augment_dim 9), 55.7 M parameters. Select the variant with overrides:
  class-conditional   --config.data.num_classes=10
  no augmentation     --config.model.augment_dim=0 --config.data.augment_p=0
  VP / VE training    --config.precond.name=vp --config.loss.name=vp  (or ve / ve)
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.name = "tfds:cifar10"
  c.data.resolution = 32
  c.data.channels = 3
  c.data.num_classes = 0          # 10 = class-conditional
  c.data.xflip = False            # the reference's --xflip default; x-flips come from augmentation
  c.data.augment_p = 0.12         # non-leaky augmentation probability (0 = off)

  c.model = ml_collections.ConfigDict()
  c.model.arch = "ddpmpp"
  c.model.model_channels = 128
  c.model.channel_mult = (2, 2, 2)
  c.model.channel_mult_emb = 4
  c.model.num_blocks = 4
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.13
  c.model.label_dropout = 0.0
  c.model.augment_dim = 9         # 0 = no augmentation conditioning
  c.model.embedding_type = "positional"
  c.model.channel_mult_noise = 1
  c.model.encoder_type = "standard"
  c.model.decoder_type = "standard"
  c.model.resample_filter = (1, 1)
  c.model.num_groups = 32
  c.model.dtype = "float32"
  c.model.remat = False           # True: recompute each block's activations in the backward pass

  c.precond = ml_collections.ConfigDict()
  c.precond.name = "edm"
  c.precond.sigma_data = 0.5

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "edm"
  c.loss.P_mean = -1.2
  c.loss.P_std = 1.2

  c.sampler = ml_collections.ConfigDict()
  c.sampler.solver = "heun"        # 18 steps = 35 network evaluations
  c.sampler.num_steps = 18
  c.sampler.sigma_min = 0.002
  c.sampler.sigma_max = 80.0
  c.sampler.rho = 7.0
  c.sampler.s_churn = 0.0
  c.sampler.s_min = 0.0
  c.sampler.s_max = float("inf")
  c.sampler.s_noise = 1.0
  c.sampler.cpu_eltwise_fusions = False  # CPU: YNNPACK eltwise fusions (15 % slower on AVX2)

  c.training = ml_collections.ConfigDict()
  c.training.steps = 390_625       # 200 M images at batch 512
  c.training.batch_size = 512
  c.training.lr = 1e-3
  c.training.lr_rampup_images = 10_000_000
  c.training.ema_halflife_images = 500_000
  c.training.ema_rampup_ratio = 0.05
  c.training.checkpoint_every = 5_000
  c.training.keep_checkpoints = 2
  c.training.log_every = 100
  c.training.sample_every = 10_000
  c.training.sample_grid = 64
  c.training.seed = 0
  c.training.cpu_eltwise_fusions = False  # the same in the train step: 6-12 % faster on one Xeon,
                                          # 3 % slower on AVX2 (docs/bench.md)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.beta1 = 0.9
  c.optimizer.beta2 = 0.999
  c.optimizer.eps = 1e-8
  return c
