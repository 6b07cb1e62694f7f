"""Training a noise-level-conditioned discriminator for discriminator guidance (jaxdiff/dg.py).

d(x_σ, σ) tells diffused data (label 1) from diffused samples of a trained model (label 0) with the
binary cross-entropy; its logit log(d / (1 − d)) is what guidance differentiates.

What the reference (alsdudrla10/DG, train.py + classifier_lib.py) does, and what this module keeps:

- Noise levels: the reference diffuses with a VP SDE (β_min = 0.1, β_max = 20) and draws the time by
  importance sampling, with density ∝ β(t) / σ_VP(t)² on [t_min = 1e-5, 1], by inverting
  A(t) = log(exp(∫β) − 1) at A(t_min) + Z·u, u ~ U(0, 1). Since exp(∫β) − 1 = σ(t)² for the
  equivalent EDM (variance-exploding) noise level, A(t) = log σ², so that draw is exactly log σ
  uniform on [σ(t_min), σ(1)] = [0.0010005, 152.17]. `sample_sigma` draws log-uniform σ on that
  range by default (tests/test_discriminator.py checks it against the reference's formula).
- Loss: plain mean BCE (torch.nn.BCELoss) over a shuffled batch of real and generated items, each
  with its own σ: the importance sampling of σ is the whole weighting, the loss weight is 1.
- Input: the reference feeds the VP-scaled x_σ / sqrt(1 + σ²) to its feature extractor; here the
  network sees EDM's c_in·x_σ = x_σ / sqrt(σ² + σ_data²) and c_noise = ln(σ) / 4.
- Guidance: its score term is σ²·∇_x log(d / (1 − d)), d clipped to [1e-5, 1 − 1e-5] (here the
  logit itself is used, unclipped), added for σ within the range it was trained on.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import precond
from jaxdiff.errors import JaxdiffError



def vp_sigma(t):
  """σ of the reference's VP SDE (precond.VP_BETA_*) at time t, as an EDM noise level:
  sqrt(exp(∫₀ᵗ β) − 1), in float64."""
  return precond.vp_sigma(np.asarray(t, np.float64))


REF_SIGMA_MIN = float(vp_sigma(precond.VP_EPSILON_T))  # 0.0010005
REF_SIGMA_MAX = float(vp_sigma(1.0))  # 152.17


def bce_with_logits(logits, targets):
  """Mean binary cross-entropy −[y·log σ(l) + (1 − y)·log(1 − σ(l))] = softplus(l) − y·l."""
  logits = jnp.asarray(logits, jnp.float32)
  return jnp.mean(jax.nn.softplus(logits) - targets * logits)


@dataclasses.dataclass(frozen=True)
class DiscriminatorLoss:
  """BCE of d(x + σn, σ) between real (1) and generated (0) images, log-uniform σ (see above)."""
  sigma_min: float = REF_SIGMA_MIN
  sigma_max: float = REF_SIGMA_MAX
  sigma_data: float = 0.5

  def sample_sigma(self, key, n: int):
    """[n] σ with ln σ uniform on [ln sigma_min, ln sigma_max] (the reference's time density)."""
    u = jax.random.uniform(key, (n,), jnp.float32)
    lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
    return jnp.exp(lo + u * (hi - lo))

  def logits(self, net_fn: Callable, x, sigma, class_labels=None):
    """The logit log(d / (1 − d)) [B] of noisy images x at σ [B]; net_fn(x_in, c_noise, labels)."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (x.shape[0],))
    c_in = 1 / jnp.sqrt(sigma**2 + self.sigma_data**2)
    return net_fn(x * c_in.reshape((-1,) + (1,) * (x.ndim - 1)), jnp.log(sigma) / 4,
                  class_labels).astype(jnp.float32)

  def __call__(self, net_fn: Callable, real, fake, key, real_labels=None, fake_labels=None):
    """(loss, metrics) for one batch: real [B, ...] and fake [B', ...] clean images in [-1, 1],
    optional one-hot labels of each; metrics hold the accuracy (d > 1/2 on real, < 1/2 on fake)."""
    x = jnp.concatenate([real, fake]).astype(jnp.float32)
    targets = jnp.concatenate([jnp.ones(real.shape[0]), jnp.zeros(fake.shape[0])])
    labels = None if real_labels is None else jnp.concatenate([real_labels, fake_labels])
    k_sigma, k_noise = jax.random.split(key)
    sigma = self.sample_sigma(k_sigma, x.shape[0])
    noisy = x + sigma.reshape((-1,) + (1,) * (x.ndim - 1)) * jax.random.normal(k_noise, x.shape)
    logits = self.logits(net_fn, noisy, sigma, labels)
    loss = bce_with_logits(logits, targets)
    accuracy = jnp.mean((logits > 0) == (targets > 0.5))
    return loss, {"loss": loss, "accuracy": accuracy}


def net_fn_of(graphdef, params, *, train: bool = False, rngs=None):
  """net_fn(x_in, c_noise, class_labels) -> logits of the network (graphdef, params)."""
  from flax import nnx

  def fn(x_in, c_noise, class_labels):
    return nnx.merge(graphdef, params)(x_in, c_noise, class_labels, train=train, rngs=rngs)
  return fn


def log_ratio_fn(loss: DiscriminatorLoss, graphdef, params, class_labels=None) -> Callable:
  """log_ratio(x, σ [B]) -> [B] for `dg.discriminator_guidance`, labels fixed for the batch."""
  net = net_fn_of(graphdef, params)
  return lambda x, sigma: loss.logits(net, x, sigma, class_labels)


def make_train_step(graphdef, loss: DiscriminatorLoss, optimizer):
  """A pure, jittable (params, opt_state, real, fake, key, real_labels, fake_labels) ->
  (params, opt_state, metrics) Adam/optax step of the discriminator (dropout off)."""
  import optax

  def step(params, opt_state, real, fake, key, real_labels=None, fake_labels=None):
    def objective(p):
      return loss(net_fn_of(graphdef, p), real, fake, key, real_labels, fake_labels)
    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics
  return step


# ---------------------------------------------------------------- inputs checked before any work
def check_samples(images, labels, resolution: int, channels: int, num_classes: int, path: str):
  """The generated samples file's arrays match the data: one-line JaxdiffError otherwise."""
  want = (resolution, resolution, channels)
  if images.ndim != 4 or tuple(images.shape[1:]) != want:
    raise JaxdiffError(f"samples file {path!r} holds images of shape {tuple(images.shape[1:])}, "
                       f"but the data are {want}; sample the model of this data set")
  if num_classes:
    if labels is None:
      raise JaxdiffError(f"samples file {path!r} has no 'labels', but the data have "
                         f"{num_classes} classes; sample a class-conditional model")
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],) or labels.min() < 0 or labels.max() >= num_classes:
      raise JaxdiffError(f"samples file {path!r}: labels must be [N] in [0, {num_classes - 1}]")
  return images, labels


def load_samples(path: str, resolution: int, channels: int, num_classes: int):
  """(images float32 in [-1, 1] [N, H, W, C], labels int32 [N] or None) from a `jaxdiff sample`
  npz, checked against the data set's shape and label count."""
  import os
  if not os.path.isfile(path):
    raise JaxdiffError(f"samples file {path!r} does not exist; write one with `jaxdiff sample`")
  with np.load(path) as f:
    if "images" not in f:
      raise JaxdiffError(f"samples file {path!r} has no 'images' array (write it with "
                         "`jaxdiff sample`)")
    images = f["images"]
    labels = f["labels"] if "labels" in f else None
  check_samples(images, labels, resolution, channels, num_classes, path)
  x = images.astype(np.float32) / 127.5 - 1 if images.dtype == np.uint8 else images.astype(
      np.float32)
  return x, (None if labels is None or not num_classes else labels.astype(np.int32))


def check_compatible(disc_data, model_data):
  """A discriminator guides only models of its data shape and label count (one-line error).
  Both are DataSpecs (`Experiment.data`)."""
  def key(d):
    return (int(d.resolution), int(d.channels), int(d.num_classes))
  if key(disc_data) != key(model_data):
    r, ch, n = key(disc_data)
    r2, ch2, n2 = key(model_data)
    raise JaxdiffError(f"the discriminator was trained on {r}x{r}x{ch} images with {n} classes, "
                       f"the model makes {r2}x{r2}x{ch2} with {n2}; train a discriminator "
                       "against this model")
