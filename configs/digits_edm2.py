"""The embedded 8x8 digits with the EDM2 recipe: a small magnitude-preserving U-Net, the EDM2
loss with learned u(σ), the inverse-square-root learning rate, power-function EMA with snapshots.
Minutes on a laptop CPU, like configs/digits.py (same data, steps and batch, for comparison at
equal training images).

No reference preset exists at this size; the choices: ref_lr 0.01 (the reference's range for
magnitude-preserving Adam, img64-s), decay after 800 batches (half the run), ramp-up 20 k
images as configs/digits.py, P_mean −0.8 / P_std 1.6 (the reference's pixel-space preset),
dropout 0, Adam β = (0.9, 0.99).

training.lr is ref_lr; the `edm2` section holds what only the edm2 family (jaxdiff/families/edm2.py)
reads: ref_batches, ema_stds, snapshot_every_images. Post-hoc EMA: `jaxdiff phema`.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"
  c.data.resolution = 8
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.xflip = False
  c.data.augment_p = 0.0

  c.model = ml_collections.ConfigDict()
  c.model.arch = "edm2"
  c.model.model_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.num_blocks = 1
  c.model.attn_resolutions = (4,)
  c.model.channels_per_head = 32
  c.model.dropout = 0.0
  c.model.label_balance = 0.5
  c.model.concat_balance = 0.5
  c.model.res_balance = 0.3
  c.model.attn_balance = 0.3
  c.model.clip_act = 256.0
  c.model.logvar_channels = 32
  c.model.fourier_seed = 0
  c.model.label_dropout = 0.0
  c.model.augment_dim = 0
  c.model.dtype = "float32"
  c.model.remat = False

  c.precond = ml_collections.ConfigDict()
  c.precond.name = "edm"
  c.precond.sigma_data = 0.5

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "edm2"
  c.loss.P_mean = -0.8
  c.loss.P_std = 1.6

  c.sampler = ml_collections.ConfigDict()
  c.sampler.solver = "heun"
  c.sampler.num_steps = 18
  c.sampler.sigma_min = 0.002
  c.sampler.sigma_max = 80.0
  c.sampler.rho = 7.0
  c.sampler.s_churn = 0.0
  c.sampler.s_min = 0.0
  c.sampler.s_max = float("inf")
  c.sampler.s_noise = 1.0
  c.sampler.guidance = 1.0

  c.training = ml_collections.ConfigDict()
  c.training.steps = 1600
  c.training.batch_size = 64
  c.training.lr = 0.01             # ref_lr
  c.training.lr_rampup_images = 20_000
  c.training.ema_halflife_images = 0.0            # unused: the edm2 family's EMAs are edm2.ema_stds
  c.training.ema_rampup_ratio = 0.0               # unused, as above
  c.training.checkpoint_every = 500
  c.training.keep_checkpoints = 2
  c.training.log_every = 50
  c.training.sample_every = 800
  c.training.sample_grid = 100
  c.training.seed = 0
  c.training.grad_accum = 1
  c.training.fsdp = False
  c.training.distributed = "auto"

  c.edm2 = ml_collections.ConfigDict()
  c.edm2.ref_batches = 800
  c.edm2.ema_stds = (0.050, 0.100)
  c.edm2.snapshot_every_images = 6_400            # every 100 steps: 16 snapshots per width

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.beta1 = 0.9
  c.optimizer.beta2 = 0.99
  c.optimizer.eps = 1e-8
  return c
