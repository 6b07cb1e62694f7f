"""The one place that reads a config: `experiment(config)` turns it into frozen specs (jaxdiff.specs),
validated once; everything downstream takes those specs and never sees the ConfigDict.

The `make_*(cfg)` helpers below are the same readers for callers holding a config (the CLI, tests).
"""

from __future__ import annotations

import dataclasses
import json

import ml_collections

from jaxdiff import families, losses, precond as precond_lib, specs
from jaxdiff.errors import JaxdiffError


def _options(section, registry: dict, where: str) -> dict:
  """The entries of `section` that the chosen class takes. A section may hold constants of the
  other choices (so `--config.precond.name=vp` works on an EDM config), but a key that no choice
  takes is a typo, and is refused rather than silently ignored."""
  fields = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in registry.items()}
  known = set().union(*fields.values())
  unknown = sorted(k for k in section.keys() if k != "name" and k not in known)
  if unknown:
    raise JaxdiffError(f"{where} has key(s) {unknown} that no {where}.name takes; "
                       f"the options are {sorted(known)}")
  chosen = fields.get(section.name, set())
  return {k: v for k, v in section.items() if k in chosen}


def _frozen(value):
  """Config values as hashable Python values: lists and tuples become tuples, sections dicts."""
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_frozen(v) for v in value)
  return value


def _section(cfg, name: str) -> dict:
  """An optional config section as a plain dict ({} when absent)."""
  section = cfg.get(name, None)
  return {} if section is None else section.to_dict()


# ---------------------------------------------------------------------------------------------
# Config -> specs

def make_precond(cfg):
  opts = _options(cfg.precond, precond_lib.PRECONDS, "precond")
  return precond_lib.make_precond(cfg.precond.name, **opts)


def make_loss(cfg):
  cls = losses.LOSSES.get(cfg.loss.name)
  opts = _options(cfg.loss, losses.LOSSES, "loss")
  if cls and "sigma_data" in {f.name for f in dataclasses.fields(cls)} and "sigma_data" not in opts:
    opts["sigma_data"] = cfg.precond.get("sigma_data", 0.5)  # the loss weight uses the data's σ
  return losses.make_loss(cfg.loss.name, **opts)


def label_dim(cfg) -> int:
  return int(cfg.data.num_classes)


def make_augment(cfg):
  """data.augment_p > 0 -> the augmentation pipeline's settings (the network must take its 9
  numbers); else None."""
  from jaxdiff.data.augment import NUM_LABELS, AugmentConfig
  p = float(cfg.data.get("augment_p", 0.0) or 0.0)
  if p == 0.0:
    return None
  if not 0.0 < p <= 1.0:
    raise JaxdiffError(f"data.augment_p={p} is not a probability; use a value in [0, 1]")
  dim = int(cfg.model.get("augment_dim", 0) or 0)
  if dim != NUM_LABELS:
    raise JaxdiffError(f"data.augment_p={p} needs model.augment_dim={NUM_LABELS} (got {dim}): "
                       "without the augmentation labels the augmentations leak into samples")
  return AugmentConfig(p=p)


def data_spec(cfg) -> specs.DataSpec:
  d = cfg.data
  workers = int(d.get("workers", 0) or 0)
  if workers < 0:
    raise JaxdiffError(f"data.workers={workers} is negative; use 0 (decode in a reader thread) "
                       "or a number of worker processes")
  return specs.DataSpec(name=str(d.name), resolution=int(d.resolution), channels=int(d.channels),
                        num_classes=int(d.num_classes), tfds_data_dir=d.get("tfds_data_dir", None),
                        prefetch=int(d.get("prefetch", 2)), workers=workers,
                        xflip=bool(d.get("xflip", False)))


def network_spec(cfg, precond=None) -> specs.NetworkSpec:
  precond = make_precond(cfg) if precond is None else precond
  options = dict(_frozen(cfg.model))
  options["out_channels_factor"] = precond.out_channels_factor
  options["precond_name"] = cfg.precond.name  # multi-stage maps σ boundaries to c_noise with it
  return specs.NetworkSpec(arch=str(cfg.model.arch), options=tuple(sorted(options.items())),
                           img_resolution=int(cfg.data.resolution),
                           img_channels=int(cfg.data.channels), label_dim=label_dim(cfg))


def optimizer_spec(cfg) -> specs.OptimizerSpec:
  t, o = cfg.training, cfg.optimizer
  return specs.OptimizerSpec(lr=float(t.lr), batch_size=int(t.batch_size),
                             lr_rampup_images=float(t.lr_rampup_images), beta1=float(o.beta1),
                             beta2=float(o.beta2), eps=float(o.eps))


def training_spec(cfg) -> specs.TrainingSpec:
  from jaxdiff.train.state import halflives
  t = cfg.training
  ratio = t.ema_rampup_ratio
  return specs.TrainingSpec(
      steps=int(t.steps), batch_size=int(t.batch_size), seed=int(t.seed),
      ema_halflife_images=halflives(t.ema_halflife_images),
      ema_rampup_ratio=None if ratio is None else float(ratio),
      checkpoint_every=int(t.checkpoint_every), keep_checkpoints=int(t.get("keep_checkpoints", 2)),
      log_every=int(t.log_every), sample_every=int(t.sample_every or 0),
      sample_grid=int(t.get("sample_grid", 100)), grad_accum=int(t.get("grad_accum", 1)),
      fsdp=bool(t.get("fsdp", False)), distributed=t.get("distributed", "auto"),
      cpu_eltwise_fusions=bool(t.get("cpu_eltwise_fusions", False)))


def sampling_spec(cfg, precond=None) -> specs.SamplingSpec:
  s = cfg.sampler
  p = make_precond(cfg) if precond is None else precond
  # Never ask the network for σ outside what its preconditioning supports (the reference clips too).
  return specs.SamplingSpec(
      solver=str(s.solver), num_steps=int(s.num_steps),
      sigma_min=max(float(s.sigma_min), float(p.sigma_min)),
      sigma_max=min(float(s.sigma_max), float(p.sigma_max)), rho=float(s.rho),
      s_churn=float(s.s_churn), s_min=float(s.s_min), s_max=float(s.s_max),
      s_noise=float(s.s_noise), guidance=float(s.get("guidance", 1.0)),
      cpu_eltwise_fusions=bool(s.get("cpu_eltwise_fusions", False)))


def experiment(cfg) -> specs.Experiment:
  """The config as specs, validated once (the one-line JaxdiffErrors users see)."""
  precond = make_precond(cfg)
  loss = make_loss(cfg)
  network = network_spec(cfg, precond)
  training = training_spec(cfg)
  family = families.select(network.arch, [k for k in cfg.keys() if cfg.get(k) is not None])
  family_spec = None
  if family.make_spec is not None:
    family_spec = family.make_spec(network, loss, training.batch_size, _section(cfg, family.name))
  if family.make_precond is not None:  # e.g. the consistency parameterisation
    precond = family.make_precond(precond, family_spec)
  return specs.Experiment(data=data_spec(cfg), network=network, precond=precond, loss=loss,
                          optimizer=optimizer_spec(cfg), training=training,
                          sampling=sampling_spec(cfg, precond), augment=make_augment(cfg),
                          family=family.name, family_spec=family_spec)


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's run recorded (its config.json)."""
  from jaxdiff.config import from_json
  from jaxdiff.train import checkpoint as ckpt_lib
  return from_json(json.dumps(ckpt_lib.read_config_dict(workdir)))


def workdir_experiment(workdir: str) -> specs.Experiment:
  return experiment(workdir_config(workdir))


# ---------------------------------------------------------------------------------------------
# Things built from a config (for callers that hold one: the CLI and tests); the library builds
# them from specs, through the family registry.

def abstract_network(cfg):
  """(graphdef, params as ShapeDtypeStructs) without allocating or initialising any weights."""
  return families.abstract_network(experiment(cfg))


def make_source(cfg):
  return open_source(data_spec(cfg))


def open_source(data: specs.DataSpec):
  """The data source a DataSpec names, checked against its resolution, channels and classes."""
  from jaxdiff.data import check_source, open_source as open_named
  source = open_named(data.name, tfds_data_dir=data.tfds_data_dir)
  check_source(source, resolution=data.resolution, channels=data.channels,
               num_classes=data.num_classes)
  return source


def adopt_recorded(workdir: str, cfg) -> list[str]:
  """Copies the model keys a workdir records from its weights (train.checkpoint._RECORDED) into
  `cfg` where `cfg` has none; returns the keys copied."""
  from jaxdiff.train import checkpoint as ckpt_lib
  adopted = ckpt_lib.recorded_model_keys(workdir, cfg.model.to_dict())
  if adopted:
    with cfg.unlocked():
      for key, value in adopted.items():
        cfg.model[key] = value
  return sorted(adopted)


def run_training(cfg, workdir: str) -> dict:
  """`jaxdiff train`: records the config in the workdir (refusing one that changes what its
  weights mean), builds the specs and runs the loop. Returns the loop's summary."""
  from jaxdiff.config import to_json
  from jaxdiff.train import checkpoint as ckpt_lib
  from jaxdiff.train import loop
  from jaxdiff.train import sharding as sharding_lib
  # Before anything touches a device.
  sharding_lib.maybe_initialize_distributed(cfg.training.get("distributed", "auto"))
  # The config's one-line errors, and a family's checks of its inputs, before anything is written.
  families.check_inputs(experiment(cfg))
  ckpt_lib.ensure_writable(workdir)
  adopt_recorded(workdir, cfg)  # e.g. a converted NCSN++'s Fourier frequencies
  ckpt_lib.check_or_write_config(workdir, to_json(cfg))
  return loop.train(experiment(cfg), workdir)
