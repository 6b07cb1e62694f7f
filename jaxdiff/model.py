"""A trained model for users: `jaxdiff.load(workdir)` -> `Model` with `denoise` and `sample`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import build, sampling
from jaxdiff.config import from_json
from jaxdiff.errors import JaxdiffError
from jaxdiff.images import to_uint8
from jaxdiff.train import checkpoint as ckpt_lib
from jaxdiff.train.state import halflives, init_state
from jaxdiff.train.step import make_denoiser


def sample_keys(seed: int, start: int, count: int) -> jax.Array:
  """One key per sample, from its global index: a sample never depends on its batch."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(start, start + count))


@functools.lru_cache(maxsize=16)
def make_sample_fn(graphdef, precond, label_dim: int, shape: tuple, sampler_items: tuple,
                   guidance: float = 1.0):
  """Compiled (params, keys[B], labels[B]) -> images in [-1, 1]; one compile per (settings, shape).

  guidance w != 1 (class-conditional models): classifier-free guidance,
  D = D(x; σ, ∅) + w·(D(x; σ, c) − D(x; σ, ∅)), with ∅ the all-zero one-hot that label dropout
  trains on; both evaluations run as one doubled batch.
  """
  kwargs = dict(sampler_items)

  def fn(params, keys, labels):
    latents = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    class_labels = jax.nn.one_hot(labels, label_dim) if label_dim else None
    denoise = make_denoiser(graphdef, params, precond)
    if guidance == 1.0 or not label_dim:
      guided = lambda x, sigma: denoise(x, sigma, class_labels=class_labels)  # noqa: E731
    else:
      both = jnp.concatenate([class_labels, jnp.zeros_like(class_labels)])

      def guided(x, sigma):
        d = denoise(jnp.concatenate([x, x]), jnp.concatenate([sigma, sigma]), class_labels=both)
        d_cond, d_uncond = jnp.split(d, 2)
        return d_uncond + guidance * (d_cond - d_uncond)
    # The grid is rounded to σ the network supports (iDDPM's table), as the reference sampler does.
    return sampling.sample(guided, latents, key=noise_keys, round_sigma=precond.round_sigma,
                           **kwargs)
  return jax.jit(fn)


class Model:
  """Network + preconditioning + sampler settings of one run, with fixed weights."""

  def __init__(self, cfg, graphdef, params):
    self.cfg = cfg
    self.graphdef = graphdef
    self.params = params
    self.precond = build.make_precond(cfg)
    self.label_dim = build.label_dim(cfg)
    self.shape = (cfg.data.resolution, cfg.data.resolution, cfg.data.channels)

  def denoise(self, x, sigma, labels=None):
    """D(x; σ): x [B, H, W, C] float32, sigma [B], labels [B] int (class-conditional models)."""
    x = jnp.asarray(x, jnp.float32)
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (x.shape[0],))
    class_labels = self._one_hot(labels, x.shape[0])
    return _denoise_jit(self.graphdef, self.precond, self.params, x, sigma, class_labels)

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
             guidance: float | None = None):
    """uint8 [num, H, W, C] (and the labels used, via `sample_with_labels`); guidance defaults to
    sampler.guidance."""
    return self.sample_with_labels(num, seed, label, solver, steps, batch_size, progress,
                                   guidance)[0]

  def sample_with_labels(self, num, seed=0, label=None, solver=None, steps=None, batch_size=256,
                         progress=False, guidance: float | None = None):
    if num < 1:
      raise JaxdiffError(f"--num must be at least 1 (got {num})")
    kwargs = build.sampler_kwargs(self.cfg, solver, steps)
    labels = self.labels_for(num, label)
    batch = min(batch_size, num)
    if guidance is None:
      guidance = float(self.cfg.sampler.get("guidance", 1.0))
    fn = make_sample_fn(self.graphdef, self.precond, self.label_dim, self.shape,
                        tuple(sorted(kwargs.items())), float(guidance))
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
      out.append(to_uint8(fn(self.params, keys, lab))[:count])
    return np.concatenate(out), labels


@functools.partial(jax.jit, static_argnums=(0, 1))
def _denoise_jit(graphdef, precond, params, x, sigma, class_labels):
  return make_denoiser(graphdef, params, precond)(x, sigma, class_labels=class_labels)


def load(workdir: str, ema: bool = True, step: int | None = None) -> Model:
  cfg = from_json(__import__("json").dumps(ckpt_lib.read_config_dict(workdir)))
  graphdef, abstract_params = build.abstract_network(cfg)
  optimizer = build.make_optimizer(cfg)
  num_emas = len(halflives(cfg.training.ema_halflife_images))
  abstract = jax.eval_shape(lambda p: init_state(p, optimizer, 0, num_emas), abstract_params)
  mngr = ckpt_lib.manager(workdir, async_save=False)
  state, _ = ckpt_lib.restore(mngr, abstract, step)
  mngr.close()
  if state is None:
    raise JaxdiffError(f"{workdir!r} has no checkpoint yet; train first with `jaxdiff train`")
  return Model(cfg, graphdef, state.ema if ema else state.params)
