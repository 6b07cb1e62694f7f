"""The discriminator family: `jaxdiff train` on configs/digits_discriminator.py trains d through the
normal loop (its loss = DiscriminatorLoss on real data vs the samples file), resumes exactly, and
refuses bad inputs with one line before anything is written."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DIGITS, ROOT, TINY, run_main
from jaxdiff import build, families
from jaxdiff.build import run_training as train
from jaxdiff.config import load_config
from jaxdiff.denoiser import net_apply
from jaxdiff.discriminator import load_samples
from jaxdiff.errors import JaxdiffError
from jaxdiff.families import discriminator as fam
from jaxdiff.train import checkpoint as ckpt_lib
from jaxdiff.train.step import train_step

DISC = os.path.join(ROOT, "configs", "digits_discriminator.py")
DTINY = ["--config.model.model_channels=8", "--config.training.batch_size=16",
         "--config.training.steps=4", "--config.training.checkpoint_every=2",
         "--config.training.log_every=1"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """(model workdir, samples npz): a 2-step digits model and 40 'generated' images of its shape."""
  root = tmp_path_factory.mktemp("disc")
  model = str(root / "model")
  train(load_config(DIGITS, TINY + ["--config.training.steps=2"]), model)
  rng = np.random.default_rng(0)
  samples = str(root / "samples.npz")
  np.savez(samples, images=rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8),
           labels=(np.arange(40) % 10).astype(np.int32))
  return model, samples


def _cfg(inputs, *extra):
  model, samples = inputs
  return load_config(DISC, DTINY + [f"--config.discriminator.model={model}",
                                    f"--config.discriminator.samples={samples}", *extra])


def test_config_selects_the_family(inputs):
  exp = build.experiment(_cfg(inputs))
  assert exp.family == "discriminator"
  spec = exp.family_spec
  assert (spec.model, spec.samples) == inputs
  assert spec.loss.sigma_min == pytest.approx(0.0010005) and spec.loss.sigma_max == 152.17


@pytest.mark.slow
def test_step_is_the_bce_of_real_against_drawn_samples(inputs):
  """One skeleton step: its loss equals DiscriminatorLoss recomputed by hand on the real batch
  and the samples the step key picks (indices from the step key's own stream)."""
  exp = build.experiment(_cfg(inputs))
  optimizer = families.make_optimizer(exp)
  graphdef, params = families.make_network(exp)
  state = families.train_state(exp, params, optimizer)
  cfg = families.step_config(exp, graphdef, optimizer)
  images, labels = build.open_source(exp.data).get(np.arange(16))
  batch = {"image": jnp.asarray(images, jnp.float32), "label": jnp.asarray(labels)}
  fake_images, fake_labels = fam.load_fake(exp)
  chex.assert_shape(fake_images, (40, 8, 8, 1))
  step = jax.jit(lambda s, b: train_step(cfg, fam.discriminator_family_loss(
      exp.family_spec, fake_images, fake_labels), s, b))
  _, metrics = step(state, batch)

  key = jax.random.fold_in(state.rng, 0)
  idx = jax.random.randint(jax.random.fold_in(key, fam._FAKE_STREAM), (16,), 0, 40)
  x_np, lab_np = load_samples(inputs[1], 8, 1, 10)
  loss_key, dropout_key = jax.random.split(key)
  net = lambda x, c, lab: net_apply(graphdef, params, x, c, lab, train=True,  # noqa: E731
                                    dropout_key=dropout_key)
  want, _ = exp.family_spec.loss(net, batch["image"], jnp.asarray(x_np[np.asarray(idx)]),
                                 loss_key, jax.nn.one_hot(batch["label"], 10),
                                 jax.nn.one_hot(lab_np[np.asarray(idx)], 10))
  np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-5)
  # An untrained discriminator is near chance: BCE near ln 2.
  assert abs(float(metrics["loss"]) - np.log(2)) < 0.5


def _state(workdir):
  exp = build.workdir_experiment(workdir)
  _, abstract = families.abstract_state(exp)
  mngr = ckpt_lib.manager(workdir, async_save=False)
  state = ckpt_lib.restore(mngr, abstract)[0]
  mngr.close()
  return state


@pytest.mark.slow
def test_trains_through_the_loop_and_resumes_exactly(inputs, tmp_path):
  full, half = str(tmp_path / "full"), str(tmp_path / "half")
  summary = train(_cfg(inputs), full)
  assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])
  train(_cfg(inputs, "--config.training.steps=2"), half)
  resumed = train(_cfg(inputs), half)
  assert resumed["start_step"] == 2 and resumed["steps"] == 4
  a, b = _state(full), _state(half)
  assert int(a.step) == int(b.step) == 4
  chex.assert_trees_all_equal(a.params, b.params)
  chex.assert_trees_all_equal(a.ema, b.ema)
  chex.assert_trees_all_equal(a.opt_state, b.opt_state)


def _bad_samples(tmp_path, **arrays):
  path = str(tmp_path / "bad.npz")
  np.savez(path, **arrays)
  return path


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors_and_nothing_is_written(inputs, tmp_path):
  model, _ = inputs
  other_model = str(tmp_path / "uncond")
  train(load_config(DIGITS, TINY + ["--config.training.steps=1", "--config.data.num_classes=0"]),
        other_model)
  wrong_shape = _bad_samples(tmp_path, images=np.zeros((4, 16, 16, 1), np.uint8),
                             labels=np.zeros(4, np.int32))
  cases = [((model, wrong_shape), "shape"),
           ((other_model, inputs[1]), "0 classes")]
  for (m, s), needle in cases:
    work = str(tmp_path / "never")
    with pytest.raises(JaxdiffError, match=needle) as e:
      train(_cfg((m, s)), work)
    assert "\n" not in str(e.value)
    assert not os.path.exists(work)
  with pytest.raises(JaxdiffError, match="discriminator.model"):
    build.experiment(load_config(DISC, DTINY))


@pytest.mark.slow
def test_cli_refuses_a_samples_file_of_another_shape(inputs, tmp_path, capsys):
  wrong = _bad_samples(tmp_path, images=np.zeros((4, 16, 16, 1), np.uint8),
                       labels=np.zeros(4, np.int32))
  work = str(tmp_path / "never")
  code, _, err = run_main(capsys, "train", "--config", DISC, "--workdir", work, *DTINY,
                          f"--config.discriminator.model={inputs[0]}",
                          f"--config.discriminator.samples={wrong}")
  assert code == 2, err
  assert "shape" in err.strip().splitlines()[-1]
  assert not os.path.exists(work)
