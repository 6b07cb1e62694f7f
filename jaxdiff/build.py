"""The one place that reads a config: it builds the network, preconditioning, loss, optimizer, data.

Everything it returns is plain objects and pure functions; nothing downstream sees the config.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from flax import nnx

from jaxdiff import losses, precond as precond_lib
from jaxdiff.errors import JaxdiffError
from jaxdiff.nets import build_network
from jaxdiff.train import optim


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


def make_network(cfg, seed: int = 0):
  """The network with fresh parameters, split into (graphdef, params)."""
  model_cfg = ml_collections.ConfigDict(cfg.model.to_dict())
  model_cfg.out_channels_factor = make_precond(cfg).out_channels_factor
  model_cfg.precond_name = cfg.precond.name  # multi-stage maps σ boundaries to c_noise with it
  net = build_network(model_cfg, img_resolution=cfg.data.resolution,
                      img_channels=cfg.data.channels, label_dim=label_dim(cfg),
                      rngs=nnx.Rngs(params=seed))
  return nnx.split(net, nnx.Param)


def abstract_network(cfg):
  """(graphdef, params as ShapeDtypeStructs) without allocating or initialising any weights."""
  return jax.eval_shape(lambda: make_network(cfg))  # graphdef passes through as static


def make_optimizer(cfg):
  if cfg.model.arch == "multistage":
    # One Adam per part (each decoder has its own moments and step count, as in the reference).
    from jaxdiff.multistage.step import make_multistage_optimizer
    return make_multistage_optimizer(cfg)
  t = cfg.training
  return optim.adam(t.lr, t.batch_size, t.lr_rampup_images, beta1=cfg.optimizer.beta1,
                    beta2=cfg.optimizer.beta2, eps=cfg.optimizer.eps)


def sampler_kwargs(cfg, solver: str | None = None, num_steps: int | None = None) -> dict:
  s = cfg.sampler
  p = make_precond(cfg)
  # Never ask the network for σ outside what its preconditioning supports (the reference clips too).
  sigma_min = max(float(s.sigma_min), float(p.sigma_min))
  sigma_max = min(float(s.sigma_max), float(p.sigma_max))
  return dict(solver=solver or s.solver, num_steps=int(num_steps or s.num_steps),
              sigma_min=sigma_min, sigma_max=sigma_max, rho=float(s.rho),
              s_churn=float(s.s_churn), s_min=float(s.s_min), s_max=float(s.s_max),
              s_noise=float(s.s_noise))


def make_source(cfg):
  from jaxdiff.data import check_source, open_source
  source = open_source(cfg.data.name, tfds_data_dir=cfg.data.get("tfds_data_dir", None))
  check_source(source, resolution=cfg.data.resolution, channels=cfg.data.channels,
               num_classes=cfg.data.num_classes)
  return source


def make_step_fn(cfg, step_cfg):
  """The plain train step (state, batch) -> (state, metrics); multi-stage configs get theirs from
  `compile_step`."""
  if cfg.model.arch == "multistage":
    raise ValueError("multi-stage configs compile their step with build.compile_step")
  from jaxdiff.train.step import make_train_step
  return make_train_step(step_cfg)


def compile_step(cfg, step_cfg, **jit_kwargs):
  """The step `jaxdiff train` and `jaxdiff bench` run, compiled with `jit_kwargs` (shardings,
  donation): make_step_fn under jax.jit, or for stochastic multi-stage training one program per
  stage (multistage.step.StageDispatch)."""
  if cfg.model.arch == "multistage":
    from jaxdiff.multistage.step import compile_multistage_step
    return compile_multistage_step(step_cfg, cfg, **jit_kwargs)
  return jax.jit(make_step_fn(cfg, step_cfg), **jit_kwargs)
