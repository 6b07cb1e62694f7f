"""ImageNet 64x64, class-conditional EDM2-XS (Karras et al., CVPR 2024; NVlabs/edm2 preset
`edm2-img64-xs`): the magnitude-preserving U-Net (model.arch = "edm2"), 124,710,949 parameters
(the reference Precond, 1000 classes), the EDM2 loss with the learned uncertainty u(σ), the
inverse-square-root learning rate, and the power-function EMA (σ_rel 0.050 and 0.100) with
snapshots for post-hoc reconstruction.

The preset (train_edm2.py): batch 2048, ref_lr 0.0120, decay 35000 batches, dropout 0.00,
P_mean −0.8, P_std 1.6, 1024 Mi images; Adam β = (0.9, 0.99); lr ramp-up 10 M images; snapshots
every 8 Mi images. The reference computes in fp16; here bfloat16 (float32 parameters): use
--config.model.dtype=float32 on CPU. Sampling as generate_images.py: Heun, 32 steps, no churn.
training.lr is ref_lr; ref_batches, the EMA widths and the snapshot interval are in the `edm2`
section (jaxdiff/families/edm2.py).
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
  c.data.augment_p = 0.0          # EDM2 trains without augmentation (the network takes no labels)

  c.model = ml_collections.ConfigDict()
  c.model.arch = "edm2"
  c.model.model_channels = 128
  c.model.channel_mult = (1, 2, 3, 4)
  c.model.num_blocks = 3
  c.model.attn_resolutions = (16, 8)
  c.model.channels_per_head = 64
  c.model.dropout = 0.00
  c.model.label_balance = 0.5     # noise (0) vs class (1) embedding
  c.model.concat_balance = 0.5    # skip (0) vs main path (1) in the decoder's mp_cat
  c.model.res_balance = 0.3
  c.model.attn_balance = 0.3
  c.model.clip_act = 256.0
  c.model.logvar_channels = 128   # the uncertainty head u(σ): MPFourier(128) -> MPConv(128 -> 1)
  c.model.fourier_seed = 0        # draws the MPFourier frequencies / phases (constants, not trained)
  c.model.label_dropout = 0.0     # EDM2 guides with a second network (autoguidance), not CFG
  c.model.augment_dim = 0
  c.model.dtype = "bfloat16"
  c.model.remat = False

  c.precond = ml_collections.ConfigDict()
  c.precond.name = "edm"          # EDM2's Precond: c_noise = ln(σ)/4, the EDM c_skip / c_out / c_in
  c.precond.sigma_data = 0.5

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "edm2"            # (w(σ)/e^u(σ))·‖D − y‖² + u(σ), jaxdiff.edm2_loss
  c.loss.P_mean = -0.8
  c.loss.P_std = 1.6

  c.sampler = ml_collections.ConfigDict()
  c.sampler.solver = "heun"
  c.sampler.num_steps = 32
  c.sampler.sigma_min = 0.002
  c.sampler.sigma_max = 80.0
  c.sampler.rho = 7.0
  c.sampler.s_churn = 0.0
  c.sampler.s_min = 0.0
  c.sampler.s_max = float("inf")
  c.sampler.s_noise = 1.0
  c.sampler.guidance = 1.0

  c.training = ml_collections.ConfigDict()
  c.training.steps = 524_288       # 1024 Mi images at batch 2048
  c.training.batch_size = 2048
  # lr = ref_lr / sqrt(max(t / (edm2.ref_batches·batch), 1)) · min(t / lr_rampup_images, 1)
  c.training.lr = 0.0120           # ref_lr
  c.training.lr_rampup_images = 10_000_000
  c.training.ema_halflife_images = 0.0            # unused: the edm2 family's EMAs are edm2.ema_stds
  c.training.ema_rampup_ratio = 0.0               # unused, as above
  c.training.checkpoint_every = 65_536             # 128 Mi images, as the reference
  c.training.keep_checkpoints = 2
  c.training.log_every = 64
  c.training.sample_every = 4_096
  c.training.sample_grid = 64
  c.training.seed = 0

  # What only the edm2 family has (jaxdiff/families/edm2.py).
  c.edm2 = ml_collections.ConfigDict()
  c.edm2.ref_batches = 35_000      # the lr decay starts after this many batches
  c.edm2.ema_stds = (0.050, 0.100)                # power-function EMAs (σ_rel) tracked while training
  c.edm2.snapshot_every_images = 8 * 2**20        # post-hoc EMA snapshots of each tracked width

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.beta1 = 0.9
  c.optimizer.beta2 = 0.99
  c.optimizer.eps = 1e-8
  return c
