"""Autoguidance from two workdirs (Karras et al., NeurIPS 2024, "Guiding a Diffusion Model with a
Bad Version of Itself"): D(x; σ) = D_guide(x; σ) + w·(D_main(x; σ) − D_guide(x; σ)), the guide a
smaller and/or shorter-trained model of the same data. `jaxdiff.load(MAIN).with_guide(
jaxdiff.load(GUIDE))` is a Model whose `sample(..., guidance=w)` runs guidance.autoguidance inside
the one jitted sampler; `jaxdiff sample --workdir MAIN --guide GUIDE --guidance W` is the same.

An unconditional guide (0 classes) of a class-conditional main model is classifier-free guidance the
way EDM2 does it (NVlabs/edm2 guides with a separate, smaller unconditional network rather than
label dropout): the same formula, the guide called without labels.
"""

from __future__ import annotations

import functools

import jax

from jaxdiff import sampling
from jaxdiff.denoiser import make_denoiser
from jaxdiff.errors import JaxdiffError
from jaxdiff.guidance import autoguidance
from jaxdiff.model import Model, jit_sampler


def check_guide(main_exp, guide_exp) -> None:
  """Refuses a guide of another resolution, channel count or label count (one line); a guide with
  no labels is accepted (CFG with a separate unconditional model)."""
  m, g = main_exp.data, guide_exp.data
  checks = [("resolution", m.resolution, g.resolution), ("channel count", m.channels, g.channels)]
  if guide_exp.label_dim:
    checks.append(("label count", main_exp.label_dim, guide_exp.label_dim))
  for what, a, b in checks:
    if a != b:
      raise JaxdiffError(f"the guide's {what} is {b}, the model's {a}; guide with a model of the "
                         "same data (resolution, channels and classes, or an unconditional one)")


def _guide_denoiser(graphdef, params, precond, conditional: bool):
  """The guide's D; an unconditional guide ignores the main model's labels."""
  denoise = make_denoiser(graphdef, params, precond)
  if conditional:
    return denoise
  return lambda x, sigma, class_labels=None, **cond: denoise(x, sigma, **cond)  # noqa: E731


@functools.lru_cache(maxsize=16)
def make_autoguided_sample_fn(graphdef, precond, guide_graphdef, guide_precond, label_dim: int,
                              shape: tuple, sampler_items: tuple, w: float,
                              guide_conditional: bool = True, eltwise: bool = False):
  """Compiled (params, guide_params, keys[B], labels[B]) -> images in [-1, 1]: model.make_sample_fn's
  latents and noise (so w = 1 draws the main model's samples), the denoiser autoguided."""
  kwargs = dict(sampler_items)

  def fn(params, guide_params, keys, labels):
    latents = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    class_labels = jax.nn.one_hot(labels, label_dim) if label_dim else None
    denoise = autoguidance(make_denoiser(graphdef, params, precond),
                           _guide_denoiser(guide_graphdef, guide_params, guide_precond,
                                           guide_conditional), w)
    guided = lambda x, sigma: denoise(x, sigma, class_labels=class_labels)  # noqa: E731
    return sampling.sample(guided, latents, key=noise_keys, round_sigma=precond.round_sigma,
                           **kwargs)
  return jit_sampler(fn, eltwise)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _guided_denoise(graphdef, precond, guide_graphdef, guide_precond, w, guide_conditional, params,
                    guide_params, x, sigma, class_labels):
  return autoguidance(make_denoiser(graphdef, params, precond),
                      _guide_denoiser(guide_graphdef, guide_params, guide_precond,
                                      guide_conditional), w)(x, sigma, class_labels=class_labels)


class GuidedModel(Model):
  """`main` autoguided by `guide`; sampling settings, shape and labels are main's. `guidance`
  (sample / denoise) is the autoguidance weight w, by default main's sampler.guidance."""

  def __init__(self, main: Model, guide: Model):
    check_guide(main.exp, guide.exp)
    super().__init__(main.exp, main.graphdef, main.params)
    self.main, self.guide = main, guide

  def _sample_fn(self, kwargs: dict, guidance: float):
    fn = make_autoguided_sample_fn(self.graphdef, self.precond, self.guide.graphdef,
                                   self.guide.precond, self.label_dim, self.shape,
                                   tuple(sorted(kwargs.items())), float(guidance),
                                   bool(self.guide.label_dim),
                                   self.exp.sampling.cpu_eltwise_fusions)
    return functools.partial(fn, self.params, self.guide.params)

  def denoise(self, x, sigma, labels=None, guidance: float | None = None):
    """The autoguided D(x; σ) with weight `guidance` (default sampler.guidance)."""
    w = self.exp.sampling.guidance if guidance is None else guidance
    x, sigma, class_labels = self._denoise_inputs(x, sigma, labels)
    return _guided_denoise(self.graphdef, self.precond, self.guide.graphdef, self.guide.precond,
                           float(w), bool(self.guide.label_dim), self.params, self.guide.params, x, sigma, class_labels)

  def with_guide(self, guide: Model):
    raise JaxdiffError("this model is already guided; call with_guide on the unguided model")
