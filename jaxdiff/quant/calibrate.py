"""Timestep-aware calibration (PTQ4DM, Q-Diffusion): the denoiser inputs along sampler trajectories.

A diffusion network sees very different activations at σ = 80 and at σ = 0.002, so static ranges
calibrated on one noise level clip or waste range at the others. `trajectory_visits` runs the
model's own sampler (its solver, steps and σ grid, guidance included) from `num` fixed latents and
records every (x, σ, class_labels) the denoiser is called at, in call order: one visit per network
evaluation (`sampling.nfe(solver, steps)` of them). `network_inputs` turns the visits into what
the network itself receives, (c_in·x, c_noise, class_labels), for `core.calibrate`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import precond as precond_lib
from jaxdiff import sampling
from jaxdiff.denoiser import make_denoiser
from jaxdiff.errors import JaxdiffError
from jaxdiff.guidance import cfg_guidance


@dataclasses.dataclass(frozen=True)
class Visit:
  """One denoiser evaluation of a sampler run: x [B, H, W, C], sigma [B], class_labels [B, C] or
  None (a guided sampler's visit holds its doubled batch: conditional, then unconditional)."""
  x: np.ndarray
  sigma: np.ndarray
  class_labels: np.ndarray | None


def _recording(denoise, visits: list):
  """denoise that also hands each call's concrete inputs to the host, in call order (the samplers
  are compiled loops, so the inputs are only concrete inside a callback)."""
  def rec(x, sigma, class_labels=None, **cond):
    def store(x, sigma, *labels):
      visits.append(Visit(np.asarray(x), np.asarray(sigma),
                          np.asarray(labels[0]) if labels else None))
    args = (x, sigma) + (() if class_labels is None else (class_labels,))
    jax.debug.callback(store, *args, ordered=True)
    return denoise(x, sigma, class_labels=class_labels, **cond)
  return rec


def trajectory_visits(model, num: int = 64, seed: int = 0, solver: str | None = None,
                      steps: int | None = None, guidance: float | None = None,
                      sigmas=None) -> list[Visit]:
  """The denoiser inputs of `model.sample(num, seed, ...)` (a `jaxdiff.model.Model`): the same
  latents, labels, solver, σ grid and guidance, one batch of `num`. Returns the visits in order."""
  if isinstance(num, bool) or int(num) != num or num < 1:
    raise JaxdiffError(f"--calib-num must be an integer >= 1, got {num!r}")
  from jaxdiff.model import sample_keys
  kwargs = model.sampler_kwargs(solver, steps, sigmas)
  if guidance is None:
    guidance = model.exp.sampling.guidance
  labels = model.labels_for(int(num))
  keys = sample_keys(seed, 0, int(num))
  shape, precond, label_dim = model.shape, model.precond, model.label_dim
  visits: list[Visit] = []

  def run(params, keys, labels):
    # The latents and noise keys of model.make_sample_fn, so a visit is what `jaxdiff sample`
    # evaluates for the same seed.
    latents = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    class_labels = jax.nn.one_hot(labels, label_dim) if label_dim else None
    denoise = _recording(make_denoiser(model.graphdef, params, precond), visits)
    if guidance != 1.0 and label_dim:
      denoise = cfg_guidance(denoise, guidance)
    guided = lambda x, sigma: denoise(x, sigma, class_labels=class_labels)  # noqa: E731
    return sampling.sample(guided, latents, key=noise_keys, round_sigma=precond.round_sigma,
                           **kwargs)
  lab = jnp.zeros(int(num), jnp.int32) if labels is None else jnp.asarray(labels)
  out = jax.jit(run)(model.params, keys, lab)
  jax.block_until_ready(out)
  jax.effects_barrier()  # every callback has run
  want = sampling.nfe(kwargs["solver"], kwargs["num_steps"])
  if len(visits) != want:
    raise JaxdiffError(f"calibration recorded {len(visits)} denoiser calls, expected {want}")
  return visits


def network_inputs(precond, visits) -> list[tuple]:
  """[(x_in = c_in·x, c_noise, class_labels)] of each visit: the network's own inputs, as the
  preconditioning makes them (recorded from precond.denoise, so no formula is repeated here)."""
  out = []
  for v in visits:
    seen = []

    def net_fn(x_in, c_noise, class_labels=None, augment_labels=None):
      seen.append((x_in, c_noise, class_labels))
      return jnp.zeros_like(x_in)
    labels = None if v.class_labels is None else jnp.asarray(v.class_labels)
    precond_lib.denoise(precond, net_fn, jnp.asarray(v.x), jnp.asarray(v.sigma),
                        class_labels=labels)
    out.append(seen[0])
  return out
