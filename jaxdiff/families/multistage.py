"""The multi-stage family (jaxdiff/multistage/): shared encoder, one decoder per σ stage, trained
one stage per step (stochastic; one compiled program per stage) or all stages per step
(stratified); one Adam state per top-level part of the network."""

from __future__ import annotations

from jaxdiff.families import Family
from jaxdiff.multistage import step as ms_step


def make_optimizer(exp):
  # One Adam per part (each decoder has its own moments and step count, as in the reference).
  return ms_step.make_multistage_optimizer(exp.optimizer)


def compile_step(step_cfg, exp, **jit_kwargs):
  return ms_step.compile_multistage_step(step_cfg, exp.family_spec, **jit_kwargs)


def info(exp) -> dict:
  from jaxdiff.multistage.info import multistage_info
  ms = multistage_info(exp)
  return dict(gflops_per_forward=ms["gflops_per_stage"], **ms)


FAMILY = Family(name="multistage", archs=("multistage",), loss=lambda exp: ms_step.multistage_loss(exp.family_spec),
                make_optimizer=make_optimizer, compile_step=compile_step, reusable_step=True,
                make_spec=ms_step.multistage_config, info=info)
