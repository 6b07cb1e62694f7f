"""The embedded default: scikit-learn's 8x8 digits, class-conditional EDM. Trains on a laptop CPU."""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"          # digits | tfds:<name> | zip:<path> | folder:<path>
  c.data.resolution = 8
  c.data.channels = 1
  c.data.num_classes = 10         # 0 = unconditional
  c.data.xflip = False            # digits are not mirror-symmetric
  c.data.augment_p = 0.0          # non-leaky augmentation probability; > 0 needs model.augment_dim=9

  c.model = ml_collections.ConfigDict()
  c.model.arch = "unet"
  c.model.model_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.num_blocks = 1
  c.model.attn_resolutions = (4,)
  c.model.dropout = 0.1
  c.model.label_dropout = 0.0     # > 0 trains the null label that classifier-free guidance needs
  c.model.augment_dim = 0         # 9 with data.augment_p > 0 (the augmentation labels)
  c.model.dtype = "float32"       # "bfloat16": bf16 compute, fp32 params / loss / optimizer / EMA
  c.model.remat = False           # True: recompute block activations in the backward (less memory)

  c.precond = ml_collections.ConfigDict()
  c.precond.name = "edm"          # edm | vp | ve | iddpm
  c.precond.sigma_data = 0.5

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "edm"             # edm | vp | ve
  c.loss.P_mean = -1.2
  c.loss.P_std = 1.2

  c.sampler = ml_collections.ConfigDict()
  # iPNDM at 10 NFE matches Heun-35 on digits (FDD 0.664 / 0.657 vs 0.649 / 0.651 over two seeds
  # of 1,000 samples; SVC 0.989 / 0.992 vs 0.987 / 0.987; docs/samplers.md) at 2/7 of the cost.
  c.sampler.solver = "ipndm"
  c.sampler.num_steps = 10
  c.sampler.sigma_min = 0.002
  c.sampler.sigma_max = 80.0
  c.sampler.rho = 7.0
  c.sampler.s_churn = 0.0
  c.sampler.s_min = 0.0
  c.sampler.s_max = float("inf")
  c.sampler.s_noise = 1.0
  c.sampler.guidance = 1.0         # classifier-free guidance weight (1 = none; needs label_dropout)
  c.sampler.cpu_eltwise_fusions = True  # CPU: YNNPACK eltwise fusions in sampling (3-20 % faster)

  c.training = ml_collections.ConfigDict()
  # 1,200 steps (76.8k images) keep the README's train + sample 1,000 under 300 s on a 2-core CPU:
  # SVC 0.975 / 0.983 (seeds 0 / 1), FDD 0.613 / 0.726, against 0.985 / 0.605 (seed 0) at 1,600
  # (bench/digits_recipe.py, docs/bench.md).
  c.training.steps = 1200
  c.training.batch_size = 64
  c.training.lr = 2e-3
  c.training.lr_rampup_images = 20_000
  c.training.ema_halflife_images = 50_000
  c.training.ema_rampup_ratio = 0.05
  c.training.checkpoint_every = 500
  c.training.keep_checkpoints = 2
  c.training.log_every = 50
  c.training.sample_every = 600
  c.training.sample_grid = 100     # images in the PNG grids written while training
  c.training.seed = 0
  c.training.grad_accum = 1        # micro-batches per step
  c.training.fsdp = False          # shard params / optimizer state over devices (else replicate)
  c.training.cpu_eltwise_fusions = False  # the same in the train step (5 % slower here)
  c.training.distributed = "auto"  # jax.distributed.initialize(): True / False / "auto" (env vars)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.beta1 = 0.9
  c.optimizer.beta2 = 0.999
  c.optimizer.eps = 1e-8
  return c
