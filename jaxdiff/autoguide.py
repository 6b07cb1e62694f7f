"""Autoguidance from two workdirs (Karras et al., NeurIPS 2024, "Guiding a Diffusion Model with a
Bad Version of Itself"): D(x; σ) = D_guide(x; σ) + w·(D_main(x; σ) − D_guide(x; σ)), the guide a
smaller and/or shorter-trained model of the same data. `jaxdiff.load(MAIN).with_guide(
jaxdiff.load(GUIDE))` is a Model whose `sample(..., guidance=w)` runs guidance.autoguidance inside
the one jitted sampler; `jaxdiff sample --workdir MAIN --guide GUIDE --guidance W` is the same.
"""

from __future__ import annotations

import functools

import jax

from jaxdiff import sampling
from jaxdiff.denoiser import make_denoiser
from jaxdiff.errors import JaxdiffError
from jaxdiff.guidance import autoguidance
from jaxdiff.model import Model


def check_guide(main_exp, guide_exp) -> None:
  """Refuses a guide of another resolution, channel count or label count (one line)."""
  m, g = main_exp.data, guide_exp.data
  for what, a, b in (("resolution", m.resolution, g.resolution),
                     ("channel count", m.channels, g.channels),
                     ("label count", main_exp.label_dim, guide_exp.label_dim)):
    if a != b:
      raise JaxdiffError(f"the guide's {what} is {b}, the model's {a}; guide with a model of the "
                         "same data (resolution, channels and classes)")


@functools.lru_cache(maxsize=16)
def make_autoguided_sample_fn(graphdef, precond, guide_graphdef, guide_precond, label_dim: int,
                              shape: tuple, sampler_items: tuple, w: float):
  """Compiled (params, guide_params, keys[B], labels[B]) -> images in [-1, 1]: model.make_sample_fn's
  latents and noise (so w = 1 draws the main model's samples), the denoiser autoguided."""
  kwargs = dict(sampler_items)

  def fn(params, guide_params, keys, labels):
    latents = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    class_labels = jax.nn.one_hot(labels, label_dim) if label_dim else None
    denoise = autoguidance(make_denoiser(graphdef, params, precond),
                           make_denoiser(guide_graphdef, guide_params, guide_precond), w)
    guided = lambda x, sigma: denoise(x, sigma, class_labels=class_labels)  # noqa: E731
    return sampling.sample(guided, latents, key=noise_keys, round_sigma=precond.round_sigma,
                           **kwargs)
  return jax.jit(fn)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _guided_denoise(graphdef, precond, guide_graphdef, guide_precond, w, params, guide_params, x,
                    sigma, class_labels):
  return autoguidance(make_denoiser(graphdef, params, precond),
                      make_denoiser(guide_graphdef, guide_params, guide_precond), w)(
                          x, sigma, class_labels=class_labels)


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
                                   tuple(sorted(kwargs.items())), float(guidance))
    return functools.partial(fn, self.params, self.guide.params)

  def denoise(self, x, sigma, labels=None, guidance: float | None = None):
    """The autoguided D(x; σ) with weight `guidance` (default sampler.guidance)."""
    w = self.exp.sampling.guidance if guidance is None else guidance
    x, sigma, class_labels = self._denoise_inputs(x, sigma, labels)
    return _guided_denoise(self.graphdef, self.precond, self.guide.graphdef, self.guide.precond,
                           float(w), self.params, self.guide.params, x, sigma, class_labels)

  def with_guide(self, guide: Model):
    raise JaxdiffError("this model is already guided; call with_guide on the unguided model")
