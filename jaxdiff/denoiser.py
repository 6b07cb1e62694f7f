"""The denoiser layer: a network's pure apply and its preconditioning wrap, D(x; σ).

Shared by training (the loss evaluates D), sampling (`jaxdiff.load`), info, bench and eval. It
imports nothing from jaxdiff.train: inference never depends on training internals.
"""

from __future__ import annotations

from flax import nnx

from jaxdiff import precond as precond_lib


def net_apply(graphdef, params, x, c_noise, class_labels=None, augment_labels=None, *,
              train=False, dropout_key=None, stage=None):
  """The raw network F as a pure function of its parameter tree. `stage` (an int, or a traced
  int32 scalar) picks a multi-stage network's decoder; None leaves the choice to the network
  (a plain network takes no stage)."""
  net = nnx.merge(graphdef, params)
  rngs = nnx.Rngs(dropout=dropout_key) if dropout_key is not None else None
  kwargs = {} if stage is None else dict(stage=stage)
  return net(x, c_noise, class_labels, augment_labels, train=train, rngs=rngs, **kwargs)


def make_denoiser(graphdef, params, precond, *, train=False, dropout_key=None, stage=None):
  """D(x; σ, class_labels, augment_labels) for fixed parameters (through `stage`'s decoder when
  given)."""
  def net_fn(x_in, c_noise, class_labels=None, augment_labels=None):
    return net_apply(graphdef, params, x_in, c_noise, class_labels, augment_labels, train=train,
                     dropout_key=dropout_key, stage=stage)

  def denoise(x, sigma, class_labels=None, augment_labels=None):
    return precond_lib.denoise(precond, net_fn, x, sigma, class_labels=class_labels,
                               augment_labels=augment_labels)
  return denoise
