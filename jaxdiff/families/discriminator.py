"""The discriminator family: d(x_σ, σ) for discriminator guidance (jaxdiff/dg.py), trained through
the normal loop (checkpoints, resume, progress bar).

Owns arch "discriminator" (jaxdiff/nets/discriminator.py). Its config section `discriminator` names
the model being refined (`model`, a workdir) and that model's samples (`samples`, a `jaxdiff sample`
npz). Each step: the loop's batch of real data is label 1; as many generated images, drawn
uniformly with replacement from the samples file, are label 0; the loss is
jaxdiff.discriminator.DiscriminatorLoss (BCE, the reference's log-uniform σ).

Design: the samples live on the device as a third argument of the jitted step (as the distillation
teacher's weights do in the consistency family), and each step's generated batch is indexed by a
key folded from the step key. So the generated draw is a pure function of (seed, step): resuming
reproduces a run exactly with no extra state in the checkpoint, and the data pipeline is untouched.
A second grain pipeline would need its own checkpointed iterator; a jit constant would bake the
whole file into the program. A digits samples file (1,000 x 8x8) is 256 KB; a large one must fit
on the device.

Both inputs are checked by `check_inputs`, which `build.run_training` calls before the workdir is
written (not when a trained discriminator is only loaded, so the files may move afterwards): a
samples file of another image shape or without the labels a conditional model needs, and a model
of another resolution, channel count or label count, are one-line errors.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp

from jaxdiff.denoiser import net_apply
from jaxdiff.discriminator import DiscriminatorLoss, check_compatible, load_samples
from jaxdiff.errors import JaxdiffError
from jaxdiff.families import Family, frozen_argument_compile_step
from jaxdiff.families.plain import make_optimizer
from jaxdiff.train.step import StepParts

_KEYS = ("model", "samples", "sigma_min", "sigma_max", "weight")
_FAKE_STREAM = 0xFA4E  # fold_in of the step key: the generated batch's own stream


@dataclasses.dataclass(frozen=True)
class DiscriminatorSpec:
  loss: DiscriminatorLoss     # BCE, σ range, σ_data of the input scaling
  model: str                  # workdir of the diffusion model the samples come from
  samples: str                # its samples (`jaxdiff sample` npz): the label-0 data
  weight: float = 1.0         # default guidance weight when sampling with this discriminator


def _data_of(network):
  # The DataSpec fields check_compatible compares, from the network's input spec.
  return SimpleNamespace(resolution=network.img_resolution, channels=network.img_channels,
                         num_classes=network.label_dim)


def make_spec(network, loss, batch_size, section: dict) -> DiscriminatorSpec:
  unknown = sorted(set(section) - set(_KEYS))
  if unknown:
    raise JaxdiffError(f"discriminator has key(s) {unknown}; its options are {sorted(_KEYS)}")
  model, samples = section.get("model") or "", section.get("samples") or ""
  if not model or not samples:
    raise JaxdiffError("a discriminator is trained against a model's samples; set "
                       "--config.discriminator.model=DIR --config.discriminator.samples=FILE.npz")
  lo = float(section.get("sigma_min", DiscriminatorLoss.sigma_min))
  hi = float(section.get("sigma_max", DiscriminatorLoss.sigma_max))
  if not 0 < lo < hi < math.inf:
    raise JaxdiffError(f"discriminator.sigma_min={lo}, sigma_max={hi}: need 0 < sigma_min < "
                       "sigma_max")
  d_loss = DiscriminatorLoss(sigma_min=lo, sigma_max=hi,
                             sigma_data=float(getattr(loss, "sigma_data", 0.5)))
  return DiscriminatorSpec(loss=d_loss, model=model, samples=samples,
                           weight=float(section.get("weight", 1.0)))


def check_inputs(exp) -> None:
  """Before `jaxdiff train` writes anything: the samples' shape / labels, then the model's data.
  (Not in make_spec: loading a trained discriminator for sampling needs neither file.)"""
  spec = exp.family_spec
  data = _data_of(exp.network)
  load_samples(spec.samples, data.resolution, data.channels, data.num_classes)
  check_compatible(data, model_data(spec.model))


def model_data(workdir: str):
  """The DataSpec of a trained model's workdir (its recorded config; one line if unreadable)."""
  from jaxdiff.model import load  # families stay below build: through the model layer
  try:
    return load(workdir).exp.data
  except JaxdiffError as e:
    raise JaxdiffError(f"discriminator.model={workdir!r}: {e}") from None


def load_fake(exp):
  """(images float32 [N, H, W, C], one-hot labels [N, C] or None) of the spec's samples file."""
  d = exp.data
  images, labels = load_samples(exp.family_spec.samples, d.resolution, d.channels, d.num_classes)
  one_hot = None if labels is None else jax.nn.one_hot(labels, d.num_classes)
  return jnp.asarray(images), one_hot


def fake_batch(key, fake_images, fake_labels, n: int):
  """n generated examples drawn uniformly with replacement (the step key's own stream)."""
  idx = jax.random.randint(jax.random.fold_in(key, _FAKE_STREAM), (n,), 0, fake_images.shape[0])
  return fake_images[idx], (None if fake_labels is None else fake_labels[idx])


def discriminator_family_loss(spec: DiscriminatorSpec, fake_images, fake_labels):
  """The family loss (train.step.train_step): BCE of real (the batch) vs generated (drawn from
  the samples), per micro-batch with its own key."""
  def family_loss(cfg, state, key, images, class_labels, aug_labels) -> StepParts:
    del aug_labels  # the discriminator takes no augmentation labels
    fake, fake_lab = fake_batch(key, fake_images, fake_labels, images.shape[0])

    def loss_fn(params, m, real, real_labels, fake, fake_labels):
      loss_key, dropout_key = jax.random.split(key if cfg.grad_accum == 1
                                               else jax.random.fold_in(key, m))

      def net(x_in, c_noise, labels):
        return net_apply(cfg.graphdef, params, x_in, c_noise, labels, train=True,
                         dropout_key=dropout_key)
      return spec.loss(net, real, fake, loss_key, real_labels, fake_labels)[0]
    return StepParts(loss_fn, (images, class_labels, fake, fake_lab))
  return family_loss


def loss(exp):
  fake_images, fake_labels = load_fake(exp)
  return discriminator_family_loss(exp.family_spec, fake_images, fake_labels)


def compile_step(step_cfg, exp, **jit_kwargs):
  """The skeleton with the samples as a third, replicated argument (not a program constant)."""
  return frozen_argument_compile_step(
      lambda fake: discriminator_family_loss(exp.family_spec, *fake), load_fake(exp), step_cfg,
      **jit_kwargs)


FAMILY = Family(name="discriminator", loss=loss, make_optimizer=make_optimizer,
                archs=("discriminator",), compile_step=compile_step, make_spec=make_spec,
                check_inputs=check_inputs)
