"""A trained model for users: `jaxdiff.load(workdir)` -> `Model` with `denoise` and `sample`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import sampling, xla_cpu
from jaxdiff.denoiser import make_denoiser
from jaxdiff.errors import JaxdiffError
from jaxdiff.guidance import cfg_guidance
from jaxdiff.images import to_uint8


def sample_keys(seed: int, start: int, count: int) -> jax.Array:
  """One key per sample, from its global index: a sample never depends on its batch."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(start, start + count))


@functools.lru_cache(maxsize=16)
def make_sample_fn(graphdef, precond, label_dim: int, shape: tuple, sampler_items: tuple,
                   guidance: float = 1.0, eltwise: bool = False):
  """Compiled (params, keys[B], labels[B]) -> images in [-1, 1]; one compile per (settings, shape).

  guidance w != 1 (class-conditional models): classifier-free guidance,
  D = D(x; σ, ∅) + w·(D(x; σ, c) − D(x; σ, ∅)), with ∅ the all-zero one-hot that label dropout
  trains on; both evaluations run as one doubled batch. eltwise: sampler.cpu_eltwise_fusions
  (`jit_sampler`).
  """
  kwargs = dict(sampler_items)

  def fn(params, keys, labels):
    latents = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    class_labels = jax.nn.one_hot(labels, label_dim) if label_dim else None
    denoise = make_denoiser(graphdef, params, precond)
    if guidance != 1.0 and label_dim:
      denoise = cfg_guidance(denoise, guidance)
    guided = lambda x, sigma: denoise(x, sigma, class_labels=class_labels)  # noqa: E731
    # The grid is rounded to σ the network supports (iDDPM's table), as the reference sampler does.
    return sampling.sample(guided, latents, key=noise_keys, round_sigma=precond.round_sigma,
                           **kwargs)
  return jit_sampler(fn, eltwise)


def jit_sampler(fn, eltwise: bool = False):
  """jax.jit for a sampler program; with `eltwise` (the config's sampler.cpu_eltwise_fusions), the
  CPU compile options of xla_cpu.eltwise_compiler_options (none on other backends)."""
  options = xla_cpu.eltwise_compiler_options(jax.default_backend()) if eltwise else {}
  return jax.jit(fn, compiler_options=options)


def sampler_sigmas(exp, solver: str, num_steps: int, sigmas=None):
  """The σ grid (num_steps + 1 values ending at 0) `Model.sample` passes to sampling.sample, or
  None for the solver's default. Refuses the consistency solver on other models; for it, with no
  grid given, the config's consistency.sample_sigmas when they hold num_steps levels."""
  from jaxdiff import timesteps
  if solver == "consistency" and exp.family != "consistency":
    raise JaxdiffError("--solver consistency needs a consistency model (a workdir trained with a "
                       "`consistency` config section); use an ODE solver such as heun or ipndm")
  if sigmas is not None:
    sig = np.asarray(sigmas, np.float64).reshape(-1)
    if sig.size and sig[-1] != 0:
      sig = np.append(sig, 0.0)
    return timesteps.check_sigmas(sig, num_steps, what="the noise levels")
  taus = exp.family_spec.sample_sigmas if exp.family == "consistency" else ()
  if solver == "consistency" and len(taus) == num_steps:
    return np.append(np.asarray(taus, np.float64), 0.0)
  return None


class Model:
  """Network + preconditioning + sampler settings of one run (an Experiment), with fixed
  weights."""

  def __init__(self, exp, graphdef, params):
    self.exp = exp
    self.graphdef = graphdef
    self.params = params
    self.precond = exp.precond
    self.label_dim = exp.label_dim
    self.shape = exp.data.shape

  def denoise(self, x, sigma, labels=None):
    """D(x; σ): x [B, H, W, C] float32, sigma [B], labels [B] int (class-conditional models)."""
    x, sigma, class_labels = self._denoise_inputs(x, sigma, labels)
    return _denoise_jit(self.graphdef, self.precond, self.params, x, sigma, class_labels)

  def _denoise_inputs(self, x, sigma, labels):
    """(x float32, σ broadcast to [B], one-hot labels or None): what every `denoise` takes."""
    x = jnp.asarray(x, jnp.float32)
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (x.shape[0],))
    return x, sigma, self._one_hot(labels, x.shape[0])

  def _one_hot(self, labels, n):
    if not self.label_dim:
      return None
    if labels is None:
      raise JaxdiffError("this model is class-conditional: pass labels")
    labels = np.asarray(labels).reshape(-1)
    if labels.min() < 0 or labels.max() >= self.label_dim:
      raise JaxdiffError(f"labels must be in [0, {self.label_dim - 1}]")
    return jax.nn.one_hot(np.broadcast_to(labels, (n,)), self.label_dim)

  def labels_for(self, num: int, label: int | None = None) -> np.ndarray | None:
    """Labels cycle 0..C-1 unless one is fixed; None for unconditional models."""
    if not self.label_dim:
      if label is not None:
        raise JaxdiffError("--label given, but this model is unconditional")
      return None
    if label is not None and not 0 <= label < self.label_dim:
      raise JaxdiffError(f"--label {label} is outside [0, {self.label_dim - 1}]")
    return (np.full(num, label) if label is not None else np.arange(num) % self.label_dim).astype(
        np.int32)

  def sample(self, num: int, seed: int = 0, label: int | None = None, solver: str | None = None,
             steps: int | None = None, batch_size: int = 256, progress: bool = False,
             guidance: float | None = None, sigmas=None):
    """uint8 [num, H, W, C] (and the labels used, via `sample_with_labels`); guidance defaults to
    sampler.guidance. `sigmas`: the solver's σ grid (steps + 1 values ending at 0, e.g. a
    `jaxdiff schedule` file's; a missing final 0 is added)."""
    return self.sample_with_labels(num, seed, label, solver, steps, batch_size, progress,
                                   guidance, sigmas)[0]

  def sampler_kwargs(self, solver=None, steps=None, sigmas=None) -> dict:
    """The `sampling.sample` keywords of this model: the config's, overridden; a consistency
    model's grid (`sampler_sigmas`)."""
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
      raise JaxdiffError(f"--steps must be an integer >= 1, got {steps!r}")
    if steps is None and sigmas is not None:
      steps = len(np.asarray(sigmas).reshape(-1)) - int(np.asarray(sigmas).reshape(-1)[-1] == 0)
    kwargs = self.exp.sampling.kwargs(solver, steps)
    sig = sampler_sigmas(self.exp, kwargs["solver"], kwargs["num_steps"], sigmas)
    if sig is not None:
      kwargs["sigmas"] = tuple(float(v) for v in sig)  # hashable: part of the compile cache key
    return kwargs

  def sample_with_labels(self, num, seed=0, label=None, solver=None, steps=None, batch_size=256,
                         progress=False, guidance: float | None = None, sigmas=None):
    if num < 1:
      raise JaxdiffError(f"--num must be at least 1 (got {num})")
    kwargs = self.sampler_kwargs(solver, steps, sigmas)
    labels = self.labels_for(num, label)
    batch = min(batch_size, num)
    if guidance is None:
      guidance = self.exp.sampling.guidance
    fn = self._sample_fn(kwargs, float(guidance))
    out = []
    starts = range(0, num, batch)
    if progress:
      from jaxdiff.progress import bar
      starts = bar(starts, desc="sampling", unit="batch", leave=False)
    for start in starts:
      count = min(batch, num - start)
      keys = sample_keys(seed, start, batch)  # fixed batch shape: the last batch is padded
      lab = np.zeros(batch, np.int32)
      if labels is not None:
        lab[:count] = labels[start:start + count]
      out.append(to_uint8(fn(keys, lab))[:count])
    return np.concatenate(out), labels

  def _sample_fn(self, kwargs: dict, guidance: float):
    """The compiled sampler as (keys, labels) -> images (a guided model overrides it)."""
    fn = make_sample_fn(self.graphdef, self.precond, self.label_dim, self.shape,
                        tuple(sorted(kwargs.items())), guidance,
                        self.exp.sampling.cpu_eltwise_fusions)
    return functools.partial(fn, self.params)

  def with_guide(self, guide: "Model"):
    """This model autoguided by `guide` (jaxdiff.autoguide): D = D_guide + w·(D − D_guide), w the
    `guidance` of sample / denoise. The guide must share the data shape and the labels."""
    from jaxdiff.autoguide import GuidedModel
    return GuidedModel(self, guide)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _denoise_jit(graphdef, precond, params, x, sigma, class_labels):
  return make_denoiser(graphdef, params, precond)(x, sigma, class_labels=class_labels)


def load(workdir: str, ema: bool = True, step: int | None = None) -> Model:
  """The Model of a workdir's checkpoint (the latest, or `step`): its EMA weights, or the raw
  ones with ema=False."""
  from jaxdiff import build, families
  from jaxdiff.train import checkpoint as ckpt_lib
  exp = build.workdir_experiment(workdir)
  graphdef, abstract_params = families.abstract_network(exp)
  quantized = _load_quantized(workdir, exp, graphdef, abstract_params)  # `jaxdiff quantize` output
  if quantized is not None:
    return Model(exp, *quantized)
  # Only the weights (orbax partial restore): no optimizer, no Adam moments, any device count.
  params = ckpt_lib.restore_weights(workdir, abstract_params, "ema" if ema else "params", step)
  if params is None:
    raise JaxdiffError(f"{workdir!r} has no checkpoint yet; train first with `jaxdiff train`")
  return Model(exp, graphdef, params)


def _load_quantized(workdir, exp, graphdef, abstract_params):
  """(qgraphdef, integer qparams) of a workdir `jaxdiff quantize` wrote (its config.json has a
  `quant` record), else None. The qwix network runs wherever a graphdef / params pair does."""
  from jaxdiff.quant import store
  from jaxdiff.train import checkpoint as ckpt_lib
  spec = store.spec_of(ckpt_lib.read_config_dict(workdir))
  if spec is None:
    return None
  return store.load_quantized(workdir, exp, graphdef, abstract_params, spec)
