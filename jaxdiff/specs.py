"""Frozen, typed settings of one experiment: what `build.experiment(config)` gives everything else.

Plain frozen dataclasses (hashable: usable as static jit arguments and cache keys); they import no
config and do no I/O. Only `jaxdiff/build.py` makes them from a ConfigDict, validating it once.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class DataSpec:
  name: str                    # digits | tfds:<name> | zip:<path> | folder:<path>
  resolution: int
  channels: int
  num_classes: int             # 0 = unconditional
  tfds_data_dir: str | None = None
  prefetch: int = 2            # batches the loader prepares ahead
  workers: int = 0             # grain worker processes decoding batches; 0: a reader thread
  xflip: bool = False          # the reference's --xflip: the dataset doubled with mirrors

  @property
  def shape(self) -> tuple:
    """One image, NHWC without the batch axis."""
    return (self.resolution, self.resolution, self.channels)


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
  """`config.model` as sorted (key, value) items (lists made tuples), plus what the network's
  input, output and conditioning need from the other sections."""
  arch: str
  options: tuple               # ((key, value), ...) of config.model, arch included
  img_resolution: int
  img_channels: int
  label_dim: int

  def as_dict(self) -> dict:
    return dict(self.options)

  def get(self, key: str, default=None):
    return self.as_dict().get(key, default)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  lr: float
  batch_size: int              # global batch: the lr ramp-up counts images
  lr_rampup_images: float
  beta1: float = 0.9
  beta2: float = 0.999
  eps: float = 1e-8


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
  steps: int
  batch_size: int
  seed: int
  ema_halflife_images: tuple   # one EMA per half-life; the first is state.ema
  ema_rampup_ratio: float | None
  checkpoint_every: int
  keep_checkpoints: int
  log_every: int
  sample_every: int
  sample_grid: int
  grad_accum: int = 1
  fsdp: bool = False
  distributed: Any = "auto"
  # Compile the train step with YNNPACK's elementwise fusions on CPU (xla_cpu.eltwise_compiler_options;
  # nothing on other backends): faster for DDPM++, slower for the digits U-Net (docs/bench.md).
  cpu_eltwise_fusions: bool = False

  @property
  def num_emas(self) -> int:
    return len(self.ema_halflife_images)


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
  """The sampler's settings, σ range already clipped to what the preconditioning supports."""
  solver: str
  num_steps: int
  sigma_min: float
  sigma_max: float
  rho: float
  s_churn: float
  s_min: float
  s_max: float
  s_noise: float
  guidance: float = 1.0
  # Compile sampler programs with YNNPACK's elementwise fusions on CPU (xla_cpu; nothing on other
  # backends): faster for the digits U-Net, slower for DDPM++ on AVX2 (docs/bench.md).
  cpu_eltwise_fusions: bool = False

  def kwargs(self, solver: str | None = None, num_steps: int | None = None) -> dict:
    """Keyword arguments of `sampling.sample` (guidance apart), with optional overrides."""
    return dict(solver=solver or self.solver, num_steps=int(num_steps or self.num_steps),
                sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=self.rho,
                s_churn=self.s_churn, s_min=self.s_min, s_max=self.s_max, s_noise=self.s_noise)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a config says, as specs. `family` names the model family (jaxdiff/families/);
  `family_spec` holds that family's own static settings (None when it has none)."""
  data: DataSpec
  network: NetworkSpec
  precond: Any                 # a jaxdiff.precond dataclass
  loss: Any                    # a jaxdiff.losses dataclass
  optimizer: OptimizerSpec
  training: TrainingSpec
  sampling: SamplingSpec
  augment: Any = None          # data.augment.AugmentConfig, or None
  family: str = "plain"
  family_spec: Any = None

  @property
  def label_dim(self) -> int:
    return self.network.label_dim
