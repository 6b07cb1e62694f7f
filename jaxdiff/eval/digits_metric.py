"""The offline digits metric: a small MLP trained by jaxdiff on scikit-learn's 8×8 digits.

`accuracy`: share of conditional samples the classifier assigns to their label.
`fdd`: Fréchet distance between its penultimate (64-d) features of the samples and of all 1797 real
digits; `fdd_floor` is the same distance between two disjoint halves of the real digits.

The classifier trains deterministically (fixed seed, fixed split, one compiled loop; seconds on a
CPU) on 80% of the digits; the other 20% are held out to measure it. It is cached as an .npz in
jaxdiff's cache dir ($JAXDIFF_CACHE, else $XDG_CACHE_HOME/jaxdiff, else ~/.cache/jaxdiff) and
retrained when the file is absent or unreadable.

Pixels: the digits (0..16) become uint8 as round(x·255/16) — the uint8 a perfect sampler would
write for jaxdiff's x/8 − 1 ∈ [−1, 1] — and every uint8 image enters the classifier as u/127.5 − 1.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxdiff.errors import JaxdiffError
from jaxdiff.eval.cache import cache_dir
from jaxdiff.eval.metrics import feature_stats, frechet_distance
from jaxdiff.fileio import atomic_savez
from jaxdiff.pytree import flatten, unflatten

RECIPE = "digits-mlp-v1"  # bump when anything below changes what the cached weights mean
CACHE_NAME = f"{RECIPE}.npz"
NUM_CLASSES = 10
FEATURE_DIM = 64
HELDOUT_FRACTION = 0.2
SEED = 0
EPOCHS = 40
BATCH = 64
LR = 2e-3


class DigitsClassifier(nnx.Module):
  """[B, 8, 8, 1] in [−1, 1] → logits [B, 10]; `features` gives the 64-d penultimate layer.

  An MLP 64 → 256 → 64 → 10: on 8×8 digits it is as accurate as a small CNN and trains ~5× faster.
  """

  def __init__(self, *, rngs: nnx.Rngs):
    self.fc0 = nnx.Linear(64, 256, rngs=rngs)
    self.fc1 = nnx.Linear(256, FEATURE_DIM, rngs=rngs)
    self.fc2 = nnx.Linear(FEATURE_DIM, NUM_CLASSES, rngs=rngs)

  def features(self, x):
    x = jax.nn.relu(self.fc0(x.reshape(x.shape[0], -1)))
    return jax.nn.relu(self.fc1(x))

  def __call__(self, x):
    return self.fc2(self.features(x))


# ---- data ----------------------------------------------------------------------------------------

def real_digits() -> tuple[np.ndarray, np.ndarray]:
  """All 1797 scikit-learn digits as uint8 [N, 8, 8, 1] and int32 labels [N]."""
  from jaxdiff.data.digits import load_digits_arrays
  pixels, labels = load_digits_arrays()
  images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, labels


def split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
  """Fixed (train, held-out) split of range(n)."""
  perm = np.random.default_rng(SEED).permutation(n)
  n_held = int(round(n * HELDOUT_FRACTION))
  return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def to_input(images) -> jnp.ndarray:
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def check_digits_images(images, what: str = "samples") -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1:] != (8, 8, 1):
    raise JaxdiffError(f"the digits metrics need 8×8 grey images [N, 8, 8, 1]; {what} have shape "
                       f"{images.shape}: use fid/kid/precision/recall for other data")
  if images.dtype != np.uint8:
    raise JaxdiffError(f"{what} must be uint8 (as `jaxdiff sample` writes them), got {images.dtype}")
  return images


# ---- training and cache --------------------------------------------------------------------------

def train_classifier() -> DigitsClassifier:
  """Deterministic: same data, split, init, batch order and step count every time."""
  images, labels = real_digits()
  train_idx, _ = split_indices(len(images))
  x = to_input(images[train_idx])
  y = jnp.asarray(labels[train_idx])
  model = DigitsClassifier(rngs=nnx.Rngs(SEED))
  graphdef, params = nnx.split(model, nnx.Param)
  steps_per_epoch = len(train_idx) // BATCH
  order_rng = np.random.default_rng(SEED + 1)
  order = np.stack([order_rng.permutation(len(train_idx))[:steps_per_epoch * BATCH]
                    .reshape(steps_per_epoch, BATCH) for _ in range(EPOCHS)]).reshape(-1, BATCH)
  opt = optax.adamw(optax.cosine_decay_schedule(LR, len(order)), weight_decay=1e-4)

  def loss_fn(p, xb, yb):
    logits = nnx.merge(graphdef, p)(xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  @jax.jit
  def fit(params, order):
    def step(carry, idx):
      p, s = carry
      grads = jax.grad(loss_fn)(p, x[idx], y[idx])
      updates, s = opt.update(grads, s, p)
      return (optax.apply_updates(p, updates), s), None
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), order)
    return params

  params = fit(params, jnp.asarray(order))
  return nnx.merge(graphdef, params)


def _flat_params(model) -> dict[str, np.ndarray]:
  _, params = nnx.split(model, nnx.Param)
  return {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(params)).items()}


def _from_flat(flat: dict) -> DigitsClassifier:
  graphdef, params = nnx.split(nnx.eval_shape(lambda: DigitsClassifier(rngs=nnx.Rngs(0))), nnx.Param)
  wanted = flatten(nnx.to_pure_dict(params))
  for key, want in wanted.items():
    if flat[key].shape != want.shape:
      raise ValueError(f"{key}: shape {flat[key].shape} != {want.shape}")
  nnx.replace_by_pure_dict(params, unflatten({k: jnp.asarray(flat[k]) for k in wanted}))
  return nnx.merge(graphdef, params)


def cache_path() -> str:
  return os.path.join(cache_dir(), CACHE_NAME)


def load_classifier(retrain: bool = False, verbose: bool = True) -> DigitsClassifier:
  """The cached classifier, trained (and cached atomically) when absent, unreadable or `retrain`."""
  path = cache_path()
  if not retrain and os.path.isfile(path):
    try:
      with np.load(path) as z:
        if str(z["recipe"]) == RECIPE:
          return _from_flat({k: z[k] for k in z.files if k != "recipe"})
    except Exception:  # corrupt or foreign file: fall through and retrain
      pass
  if verbose:
    print(f"training the digits classifier (cached at {path}) ...", file=sys.stderr)
  model = train_classifier()
  try:
    atomic_savez(path, recipe=np.array(RECIPE), **_flat_params(model))
  except OSError as e:  # a read-only cache still lets the metric run
    print(f"warning: could not cache the digits classifier at {path}: {e}", file=sys.stderr)
  return model


# ---- metrics -------------------------------------------------------------------------------------

def _apply(model, images, method: str, batch: int = 1024) -> np.ndarray:
  graphdef, params = nnx.split(model, nnx.Param)
  fn = jax.jit(lambda p, x: getattr(nnx.merge(graphdef, p), method)(to_input(x)))
  images = np.asarray(images)
  return np.concatenate([np.asarray(fn(params, images[i:i + batch]))
                         for i in range(0, len(images), batch)])


def classifier_features(images, model=None) -> np.ndarray:
  """Penultimate features [N, 64] (float64) of uint8 digits [N, 8, 8, 1]."""
  images = check_digits_images(images)
  model = model if model is not None else load_classifier()
  return _apply(model, images, "features").astype(np.float64)


def predict(images, model=None) -> np.ndarray:
  images = check_digits_images(images)
  model = model if model is not None else load_classifier()
  return _apply(model, images, "__call__").argmax(axis=-1).astype(np.int32)


def accuracy(images, labels, model=None) -> float:
  """Share of images classified as their label."""
  labels = np.asarray(labels)
  if labels.shape != (np.asarray(images).shape[0],):
    raise JaxdiffError(f"labels must be [N] matching the images, got {labels.shape}")
  return float((predict(images, model) == labels).mean())


def real_stats(model=None) -> tuple[np.ndarray, np.ndarray]:
  images, _ = real_digits()
  return feature_stats(classifier_features(images, model))


def fdd(images, model=None) -> float:
  """Fréchet distance of the samples' classifier features to those of all real digits."""
  model = model if model is not None else load_classifier()
  mu, sigma = feature_stats(classifier_features(images, model))
  return frechet_distance(mu, sigma, *real_stats(model))


def fdd_floor(model=None) -> float:
  """FDD between two disjoint random halves of the real digits (fixed split): what a perfect
  sampler scores at that sample count (≈ 900 vs 900)."""
  model = model if model is not None else load_classifier()
  images, _ = real_digits()
  perm = np.random.default_rng(SEED + 2).permutation(len(images))
  half = len(images) // 2
  feats = classifier_features(images[perm], model)
  return frechet_distance(*feature_stats(feats[:half]), *feature_stats(feats[half:]))
