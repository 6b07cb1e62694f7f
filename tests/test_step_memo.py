"""families.training_step: a second run of the same experiment in one process reuses the jitted
step (no new trace); a change the step depends on, or a family hook that reads files, gives a new
one."""

import os

import jax
import numpy as np

from conftest import DIGITS, ROOT, TINY


def _run_parts(*overrides, config=DIGITS):
  from jaxdiff import build, families
  from jaxdiff.config import load_config
  cfg = load_config(config, TINY + list(overrides))
  exp = build.experiment(cfg)
  optimizer = families.make_optimizer(exp)
  graphdef, _ = families.abstract_state(exp, optimizer)
  return cfg, exp, optimizer, graphdef


def _step(*overrides, config=DIGITS):
  from jaxdiff import families
  _, exp, optimizer, graphdef = _run_parts(*overrides, config=config)
  return families.training_step(exp, optimizer, graphdef, donate_argnums=0)


def test_same_experiment_reuses_the_step_and_a_changed_one_does_not():
  first = _step()
  # Loop-only fields (length, checkpoint and log cadence) do not change the program.
  assert _step("--config.training.steps=7", "--config.training.log_every=3") is first
  assert _step("--config.training.lr=1e-3") is not first
  assert _step("--config.training.batch_size=8") is not first
  assert _step("--config.model.dropout=0.0") is not first


def test_reused_step_trains_like_a_fresh_one():
  """The memoised step, given a new run's state, gives what a freshly built step gives."""
  from jaxdiff import build, families
  cfg, exp, optimizer, graphdef = _run_parts("--config.training.steps=3")
  memo = families.training_step(exp, optimizer, graphdef, donate_argnums=0)
  fresh = families.compile_step(exp, families.step_config(exp, graphdef, optimizer))
  _, params = families.initial_params(exp)
  images, labels = build.make_source(cfg).get(np.arange(exp.training.batch_size))
  batch = {"image": np.asarray(images, np.float32), "label": np.asarray(labels, np.int32)}
  want, _ = fresh(families.train_state(exp, params, optimizer), batch)
  got, _ = memo(families.train_state(exp, params, optimizer), batch)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_family_hook_is_rebuilt_unless_marked_reusable():
  from jaxdiff import families
  # The multi-stage hook builds its per-stage programs from the Experiment alone: reused.
  _, exp, optimizer, graphdef = _run_parts(
      config=os.path.join(ROOT, "configs", "digits_multistage.py"))
  assert families.of(exp).compile_step is not None and families.of(exp).reusable_step
  assert (families.training_step(exp, optimizer, graphdef)
          is families.training_step(exp, optimizer, graphdef))
  # The discriminator's hook holds the weights of the model it reads from disk: rebuilt.
  family = families.get("discriminator")
  assert family.compile_step is not None and not family.reusable_step
