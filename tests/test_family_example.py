"""The worked example of docs/ARCHITECTURE.md ("Adding a model family") works as written: its code
block, registered as a family, is picked by build.experiment and trains through the skeleton."""

import dataclasses
import os
import re
import sys
import types

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from conftest import ROOT
from jaxdiff import build, families
from jaxdiff.denoiser import make_denoiser


def _example_module(monkeypatch):
  with open(os.path.join(ROOT, "docs", "ARCHITECTURE.md"), encoding="utf-8") as f:
    doc = f.read()
  section = doc[doc.index("## Adding a model family"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  module = types.ModuleType("jaxdiff_doc_huber")
  monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
  exec(compile(code, "docs/ARCHITECTURE.md", "exec"), module.__dict__)
  return module


def test_the_documented_family_trains_through_the_skeleton(tiny_cfg, monkeypatch):
  module = _example_module(monkeypatch)
  assert module.FAMILY.name == "huber" and module.FAMILY.archs == ("huber_unet",)
  # Registered for the digits config's arch, ahead of plain (as its FAMILIES entry would be).
  module.FAMILY = dataclasses.replace(module.FAMILY, archs=("unet",))
  monkeypatch.setattr(families, "FAMILIES", {"huber": "jaxdiff_doc_huber", **families.FAMILIES})
  cfg = tiny_cfg
  with cfg.unlocked():
    cfg.huber = ml_collections.ConfigDict({"c": 0.1})
  exp = build.experiment(cfg)
  assert exp.family == "huber"
  assert exp.family_spec == module.HuberSpec(c=0.1)

  graphdef, params = families.make_network(exp)
  optimizer = families.make_optimizer(exp)
  state = families.train_state(exp, params, optimizer)
  step = families.compile_step(exp, families.step_config(exp, graphdef, optimizer))
  images, labels = build.open_source(exp.data).get(np.arange(exp.training.batch_size))
  new, metrics = step(state, {"image": images, "label": labels})

  # The loss the step reports is the documented formula, recomputed here in float64 from the
  # skeleton's keys: step key fold_in(rng, step), micro-batch 0.
  key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 0)
  sigma_key, noise_key, dropout_key = jax.random.split(key, 3)
  sigma = exp.loss.sample_sigma(sigma_key, (images.shape[0],))
  noise = jax.random.normal(noise_key, images.shape) * sigma[:, None, None, None]
  D = jax.jit(lambda p: make_denoiser(graphdef, p, exp.precond, train=True,
                                      dropout_key=dropout_key)(
      images + noise, sigma, class_labels=jax.nn.one_hot(labels, exp.label_dim)))(state.params)
  err = np.mean((np.asarray(D, np.float64) - np.asarray(images, np.float64)) ** 2, axis=(1, 2, 3))
  weight = np.asarray(exp.loss.weight(sigma), np.float64)
  want = np.mean(np.sqrt(weight * err + 0.1**2) - 0.1)
  chex.assert_shape(metrics["loss"], ())
  chex.assert_type(metrics["loss"], jnp.float32)
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-4)
  assert bool(metrics["grads_finite"]) and float(metrics["grad_norm"]) > 0
  assert int(new.step) == 1
