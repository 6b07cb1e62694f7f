"""Model families: what a kind of model brings to training, each one module here.

A family is a frozen `Family`: its network builder, its optimizer, its per-step loss for the
train-step skeleton (train.step.train_step), the hook that compiles that step, and optionally its
own static settings (`make_spec`, from the config section named like the family) and extra `info`
figures. `for_arch(model.arch)` picks the family owning an architecture (`plain` owns the rest);
`select(arch, sections)` first gives a family whose config section is present (a `consistency`
section makes any network a consistency model), if it claims configs that way.
See docs/ARCHITECTURE.md, "Adding a model family".
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Callable

import jax
from flax import nnx

# name -> module defining FAMILY; the order is the lookup order of `for_arch`.
FAMILIES = {
    "consistency": "jaxdiff.families.consistency",
    "adversarial": "jaxdiff.families.adversarial",
    "multistage": "jaxdiff.families.multistage",
    "edm2": "jaxdiff.families.edm2",
    "discriminator": "jaxdiff.families.discriminator",
    "student": "jaxdiff.families.student",  # issue 14: a lightweight network distilled from a teacher
    "plain": "jaxdiff.families.plain",
}


def default_network(exp, seed: int = 0):
  """The network of `exp.network` (jaxdiff.nets registry) with fresh parameters, split into
  (graphdef, params)."""
  from jaxdiff.nets import build_network
  n = exp.network
  net = build_network(n.as_dict(), img_resolution=n.img_resolution, img_channels=n.img_channels,
                      label_dim=n.label_dim, rngs=nnx.Rngs(params=seed))
  return nnx.split(net, nnx.Param)


def default_compile_step(family_loss, step_cfg, **jit_kwargs):
  """The skeleton with `family_loss` as one jitted program."""
  from jaxdiff.train.step import train_step
  return jax.jit(lambda state, batch: train_step(step_cfg, family_loss, state, batch),
                 **jit_kwargs)


def frozen_argument_compile_step(make_family_loss, frozen_params, step_cfg, **jit_kwargs):
  """The skeleton as one jit with a frozen network's weights (a teacher's) as a third argument,
  replicated on the batch's mesh, rather than constants folded into the program.
  `make_family_loss(frozen_params)` -> the family loss."""
  from jaxdiff.train.step import train_step
  kw = dict(jit_kwargs)
  if "in_shardings" in kw:
    from jax.sharding import NamedSharding, PartitionSpec
    batch_sh = kw["in_shardings"][1]
    rep = None
    if isinstance(batch_sh, NamedSharding):
      rep = NamedSharding(batch_sh.mesh, PartitionSpec())
      frozen_params = jax.device_put(frozen_params, rep)
    kw["in_shardings"] = tuple(kw["in_shardings"]) + (rep,)

  def step(state, batch, params):
    return train_step(step_cfg, make_family_loss(params), state, batch)
  jitted = jax.jit(step, **kw)
  return lambda state, batch: jitted(state, batch, frozen_params)


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  loss: Callable               # (Experiment) -> family_loss for train.step.train_step:
                               #   (StepConfig, state, key, images, class_labels, aug) -> StepParts
  make_optimizer: Callable     # (Experiment) -> optax.GradientTransformation
  archs: tuple = ()            # model.arch values this family owns
  make_network: Callable = default_network   # (Experiment, seed) -> (graphdef, params)
  # (StepConfig, Experiment, **jit_kwargs) -> step(state, batch); None: the skeleton, one jit
  compile_step: Callable | None = None
  # True: compile_step builds the step from its arguments alone (no files read, no weights held),
  #   so `training_step` may hand a later run of the same Experiment the same compiled step
  reusable_step: bool = False
  make_spec: Callable | None = None   # (NetworkSpec, loss, batch_size, section: dict) -> spec
  info: Callable | None = None         # (Experiment) -> dict of extra `jaxdiff info` figures
  # True: the family owns every config holding its section (whatever the arch; see `select`)
  selected_by_section: bool = False
  # (precond from the config, family_spec) -> the preconditioning the family's model uses
  make_precond: Callable | None = None
  # (Experiment, fresh params) -> the params a new run starts from (e.g. a trained model's)
  init_params: Callable | None = None
  # (Experiment) -> dict of StepConfig's optional hooks (prepare_params, sanitize, ema)
  step_options: Callable | None = None
  num_emas: Callable | None = None     # (Experiment) -> EMAs in the TrainState (None: one per
                                       #   training.ema_halflife_images)
  # (Experiment, workdir, step, state) -> None: host-side work after each step (EDM2: snapshots)
  on_step: Callable | None = None
  # (Experiment) -> None: checks of the run's inputs (files, other workdirs) that `jaxdiff train`
  #   makes before writing anything; not made when a trained workdir is only loaded
  check_inputs: Callable | None = None
  # (Experiment, seed) -> the TrainState.aux a fresh run starts with (a second network and its
  #   optimizer state, say), updated by the family's loss through StepParts.aux; None: no aux
  init_aux: Callable | None = None


def get(name: str) -> Family:
  return importlib.import_module(FAMILIES[name]).FAMILY


def for_arch(arch: str) -> Family:
  for name in FAMILIES:
    family = get(name)
    if arch in family.archs:
      return family
  return get("plain")


def select(arch: str, sections=()) -> Family:
  """The family of a config: one with `selected_by_section` whose section is among `sections`
  (the config's top-level keys), else the owner of `arch`."""
  for name in FAMILIES:
    if name in sections and get(name).selected_by_section:
      return get(name)
  return for_arch(arch)


def of(exp) -> Family:
  return get(exp.family)


# What every caller builds from an Experiment: one definition each.

def make_network(exp, seed: int = 0):
  return of(exp).make_network(exp, seed)


def initial_params(exp, seed: int = 0):
  """(graphdef, the params a fresh run starts from): the network's, through the family's
  `init_params` hook when it has one."""
  graphdef, params = make_network(exp, seed)
  hook = of(exp).init_params
  return graphdef, (params if hook is None else hook(exp, params))


def abstract_network(exp):
  """(graphdef, params as ShapeDtypeStructs) without allocating or initialising any weights."""
  return jax.eval_shape(lambda: make_network(exp))  # graphdef passes through as static


def make_optimizer(exp):
  return of(exp).make_optimizer(exp)


def train_state(exp, params, optimizer=None, seed: int | None = None):
  """The TrainState of `exp` around `params` (fresh optimizer state, one EMA per half-life)."""
  from jaxdiff.train.state import init_state
  optimizer = make_optimizer(exp) if optimizer is None else optimizer
  seed = exp.training.seed if seed is None else seed
  state = init_state(params, optimizer, seed, num_emas(exp))
  hook = of(exp).init_aux
  return state if hook is None else state.replace(aux=hook(exp, seed))


def num_emas(exp) -> int:
  family = of(exp)
  return family.num_emas(exp) if family.num_emas is not None else exp.training.num_emas


def abstract_state(exp, optimizer=None):
  """(graphdef, the TrainState's layout as ShapeDtypeStructs): what a checkpoint restores into."""
  graphdef, params = abstract_network(exp)
  return graphdef, jax.eval_shape(lambda p: train_state(exp, p, optimizer), params)


def step_config(exp, graphdef, optimizer):
  from jaxdiff.train.step import StepConfig
  t = exp.training
  family = of(exp)
  hooks = family.step_options(exp) if family.step_options is not None else {}
  return StepConfig(graphdef=graphdef, precond=exp.precond, loss=exp.loss, optimizer=optimizer,
                    label_dim=exp.label_dim, batch_size=t.batch_size,
                    ema_halflife_images=t.ema_halflife_images, ema_rampup_ratio=t.ema_rampup_ratio,
                    grad_accum=t.grad_accum, augment=exp.augment, **hooks)


def check_inputs(exp) -> None:
  """The family's checks of a run's inputs (one-line JaxdiffErrors), if it has any."""
  hook = of(exp).check_inputs
  if hook is not None:
    hook(exp)


def compile_step(exp, step_cfg, **jit_kwargs):
  """The step `jaxdiff train` and `jaxdiff bench` run, compiled with `jit_kwargs` (shardings,
  donation) by the family's hook, and with the CPU compile options the config asks for."""
  if exp.training.cpu_eltwise_fusions:
    from jaxdiff import xla_cpu
    jit_kwargs = {**jit_kwargs, "compiler_options": {
        **jit_kwargs.get("compiler_options", {}),
        **xla_cpu.eltwise_compiler_options(jax.default_backend())}}
  family = of(exp)
  if family.compile_step is not None:
    return family.compile_step(step_cfg, exp, **jit_kwargs)
  return default_compile_step(family.loss(exp), step_cfg, **jit_kwargs)


@dataclasses.dataclass(frozen=True)
class _StepKey:
  exp: object                  # the Experiment with its loop-only training fields blanked
  jit: tuple                   # jit_kwargs as (leaves, treedef): shardings and donation
  args: tuple = dataclasses.field(compare=False, hash=False)  # what the first caller passed


@functools.lru_cache(maxsize=4)
def _memoised_step(key: _StepKey):
  exp, step_cfg = key.args
  return compile_step(exp, step_cfg, **jax.tree.unflatten(key.jit[1], key.jit[0]))


# Training fields the loop reads and the step does not: runs differing only in these share a step.
_LOOP_ONLY = dict(steps=0, checkpoint_every=0, keep_checkpoints=0, log_every=0, sample_every=0,
                  sample_grid=0, distributed=None)


def training_step(exp, optimizer, graphdef, **jit_kwargs):
  """`compile_step` of `exp` with the StepConfig built from (exp, graphdef, optimizer), for a run's
  loop. The skeleton's step (no compile_step hook) and a hook marked `reusable_step` are built
  from the Experiment alone, so a second run of the same experiment in one process (a rerun
  notebook cell, a resumed run, another length) gets the first run's jitted step back: no tracing,
  lowering or cache read again. Other hooks may hold more than the Experiment (a teacher's weights
  read from disk) and are rebuilt each time."""
  step_cfg = step_config(exp, graphdef, optimizer)
  family = of(exp)
  if family.compile_step is not None and not family.reusable_step:
    return compile_step(exp, step_cfg, **jit_kwargs)
  leaves, treedef = jax.tree.flatten(jit_kwargs)
  blank = dataclasses.replace(exp, training=dataclasses.replace(exp.training, **_LOOP_ONLY))
  return _memoised_step(_StepKey(blank, (tuple(leaves), treedef), (exp, step_cfg)))
