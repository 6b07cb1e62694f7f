"""Noise stages: σ intervals, their probability under the training noise distribution, and
drawing a stage and its σ the way multi-stage training does. Pure functions (no config)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import JaxdiffError

_DECODER = re.compile(r"^decoder_(\d+)$")


def check_boundaries(boundaries) -> tuple:
  """Positive, strictly increasing σ boundaries as a tuple of floats."""
  b = tuple(float(v) for v in boundaries)
  if any(v <= 0 for v in b) or any(b1 <= b0 for b0, b1 in zip(b, b[1:])):
    raise JaxdiffError(f"stage boundaries {list(b)} must be positive and strictly increasing σ "
                       "values")
  return b


def stage_intervals(boundaries) -> list:
  """[(lo, hi)] per stage: [0, b_0), [b_0, b_1), ..., [b_{K-2}, ∞)."""
  b = check_boundaries(boundaries)
  edges = (0.0,) + b + (float("inf"),)
  return list(zip(edges[:-1], edges[1:]))


def stage_probabilities(loss, boundaries) -> np.ndarray:
  """Each stage's probability mass under the loss's σ distribution (float64, sums to 1)."""
  if not hasattr(loss, "probability"):
    raise JaxdiffError(f"multi-stage training needs a loss with a restricted σ distribution "
                       f"(loss.name = 'edm'); {type(loss).__name__} has none")
  p = np.array([float(loss.probability(lo if lo > 0 else None, hi if np.isfinite(hi) else None))
                for lo, hi in stage_intervals(boundaries)], np.float64)
  return p / p.sum()


def stage_of(value, boundaries):
  """Stage index (int32, shaped like `value`) for increasing `boundaries`: the number of
  boundaries ≤ value. The one definition: σ against σ boundaries here, c_noise against c_noise
  boundaries in the network (nets/multistage)."""
  b = jnp.asarray(np.asarray(boundaries, np.float32))
  return jnp.sum(jnp.asarray(value, jnp.float32)[..., None] >= b, axis=-1).astype(jnp.int32)


def stage_of_sigma(sigma, boundaries):
  """Stage index (int32, shaped like sigma) of σ for checked σ boundaries."""
  return stage_of(sigma, check_boundaries(boundaries))


def draw_stage(key, probabilities):
  """One stage index (int32 scalar) drawn with the given probabilities."""
  logp = jnp.log(jnp.asarray(np.asarray(probabilities, np.float32)))
  return jax.random.categorical(key, logp).astype(jnp.int32)


def sample_stage_sigma(loss, key, stage, boundaries, shape):
  """σ of `shape` from the loss's distribution restricted to `stage`'s interval (stage may be
  traced: its bounds are looked up, not branched on)."""
  intervals = stage_intervals(boundaries)
  lo = jnp.asarray([a for a, _ in intervals], jnp.float32)[stage]
  hi = jnp.asarray([b for _, b in intervals], jnp.float32)[stage]
  return loss.sample_sigma(key, shape, sigma_lo=lo, sigma_hi=hi)


def stratified_counts(probabilities, batch_size: int) -> tuple:
  """Examples per stage for a stratified batch: proportional to the probabilities by largest
  remainder, at least one per stage (so every decoder sees data every step)."""
  p = np.asarray(probabilities, np.float64)
  k = len(p)
  if batch_size < k:
    raise JaxdiffError(f"stratified multi-stage training needs batch_size ≥ {k} (one per stage)")
  counts = np.ones(k, np.int64)
  rest = batch_size - k
  ideal = p * rest
  counts += np.floor(ideal).astype(np.int64)
  left = batch_size - counts.sum()
  order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")
  counts[order[:left]] += 1
  return tuple(int(c) for c in counts)


def decoder_index(path) -> int | None:
  """The k of the first `decoder_k` key in a pytree path, or None (a shared leaf)."""
  for entry in path:
    name = getattr(entry, "key", getattr(entry, "name", None))
    if isinstance(name, str):
      m = _DECODER.match(name)
      if m:
        return int(m.group(1))
  return None


def keep_inactive_decoders(new, old, stage):
  """`new` with every leaf under a `decoder_k` key other than `stage` taken from `old`.

  Works on any pytree whose paths name the decoders: parameters, optimizer moments and counts.
  """
  def pick(path, n, o):
    k = decoder_index(path)
    if k is None:
      return n
    return jnp.where(jnp.asarray(stage) == k, n, o)
  return jax.tree_util.tree_map_with_path(pick, new, old)
