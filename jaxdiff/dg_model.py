"""A trained model sampled with discriminator guidance (jaxdiff/dg.py): `DGModel(model, disc, w)`.

`disc` is a `jaxdiff.load(DISC, ema=False)` of a discriminator workdir (family "discriminator"; the
reference trains its classifier without an EMA, so its raw weights are used). Every solver runs
the guided denoiser D' = D + w·σ²·∇_x log(d / (1 − d)) inside the one jitted sampler, with
`jaxdiff.model.make_sample_fn`'s latents and noise (so w = 0 draws the model's own samples bit for
bit), guidance on only for σ in the discriminator's training range. Classifier-free guidance
(`guidance` of sample) composes: D is the CFG denoiser, then the discriminator term is added.
`jaxdiff sample --workdir DIR --discriminator DISC --dg-weight W` is the same.
"""

from __future__ import annotations

import functools

import jax

from jaxdiff import dg, sampling
from jaxdiff.denoiser import make_denoiser
from jaxdiff.discriminator import check_compatible, log_ratio_fn
from jaxdiff.errors import JaxdiffError
from jaxdiff.guidance import cfg_guidance
from jaxdiff.model import Model, jit_sampler


def check_discriminator(model_exp, disc_exp) -> None:
  """A discriminator workdir of this model's data (shape and label count): one line otherwise."""
  if disc_exp.family != "discriminator":
    raise JaxdiffError(f"--discriminator names a {disc_exp.family!r} workdir; train one with "
                       "`jaxdiff train --config configs/digits_discriminator.py ...`")
  check_compatible(disc_exp.data, model_exp.data)


def _guided(graphdef, precond, d_graphdef, d_loss, label_dim, guidance, w, sigma_range, params,
            d_params, class_labels):
  denoise = make_denoiser(graphdef, params, precond)
  if guidance != 1.0 and label_dim:
    denoise = cfg_guidance(denoise, guidance)
  base = lambda x, sigma: denoise(x, sigma, class_labels=class_labels)  # noqa: E731
  log_ratio = log_ratio_fn(d_loss, d_graphdef, d_params, class_labels)
  return dg.discriminator_guidance(base, log_ratio, w, *sigma_range)


@functools.lru_cache(maxsize=16)
def make_dg_sample_fn(graphdef, precond, d_graphdef, d_loss, label_dim: int, shape: tuple,
                      sampler_items: tuple, guidance: float, w: float, sigma_range: tuple,
                      eltwise: bool = False):
  """Compiled (params, d_params, keys[B], labels[B]) -> images in [-1, 1]."""
  kwargs = dict(sampler_items)

  def fn(params, d_params, keys, labels):
    latents = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    class_labels = jax.nn.one_hot(labels, label_dim) if label_dim else None
    guided = _guided(graphdef, precond, d_graphdef, d_loss, label_dim, guidance, w, sigma_range,
                     params, d_params, class_labels)
    return sampling.sample(guided, latents, key=noise_keys, round_sigma=precond.round_sigma,
                           **kwargs)
  return jit_sampler(fn, eltwise)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6, 7))
def _dg_denoise(graphdef, precond, d_graphdef, d_loss, label_dim, guidance, w, sigma_range, params,
                d_params, x, sigma, class_labels):
  return _guided(graphdef, precond, d_graphdef, d_loss, label_dim, guidance, w, sigma_range,
                 params, d_params, class_labels)(x, sigma)


class DGModel(Model):
  """`model` with discriminator guidance of weight `w` (default: the discriminator config's
  `discriminator.weight`) by the discriminator Model `disc`."""

  def __init__(self, model: Model, disc: Model, w: float | None = None):
    if type(model) is not Model:
      raise JaxdiffError("discriminator guidance applies to a plain model; it does not combine "
                         "with --guide (autoguidance)")
    check_discriminator(model.exp, disc.exp)
    super().__init__(model.exp, model.graphdef, model.params)
    self.disc = disc
    spec = disc.exp.family_spec
    self.d_loss = spec.loss
    self.w = float(spec.weight if w is None else w)
    self.sigma_range = (float(spec.loss.sigma_min), float(spec.loss.sigma_max))

  def _sample_fn(self, kwargs: dict, guidance: float):
    fn = make_dg_sample_fn(self.graphdef, self.precond, self.disc.graphdef, self.d_loss,
                           self.label_dim, self.shape, tuple(sorted(kwargs.items())),
                           float(guidance), self.w, self.sigma_range,
                           self.exp.sampling.cpu_eltwise_fusions)
    return functools.partial(fn, self.params, self.disc.params)

  def denoise(self, x, sigma, labels=None, guidance: float | None = None):
    """The guided D'(x; σ) (classifier-free weight `guidance`, default sampler.guidance)."""
    g = self.exp.sampling.guidance if guidance is None else guidance
    x, sigma, class_labels = self._denoise_inputs(x, sigma, labels)
    return _dg_denoise(self.graphdef, self.precond, self.disc.graphdef, self.d_loss,
                       self.label_dim, float(g), self.w, self.sigma_range, self.params,
                       self.disc.params, x, sigma, class_labels)

  def with_guide(self, guide: Model):
    raise JaxdiffError("discriminator guidance does not combine with autoguidance (--guide)")


def with_discriminator(model: Model, disc_workdir: str, w: float | None = None) -> DGModel:
  """`model` guided by the discriminator trained in `disc_workdir` (its raw weights)."""
  from jaxdiff.model import load
  return DGModel(model, load(disc_workdir, ema=False), w)
