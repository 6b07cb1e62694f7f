"""Sampling with discriminator guidance (jaxdiff/dg_model.py, `jaxdiff sample --discriminator`):
W = 0 is the plain sampler bit for bit, W > 0 changes the samples, the guided D' equals D plus
w·σ²·∇ of the discriminator's logit computed here by hand (and D outside the trained σ range),
the CLI equals Python, and a discriminator of other data is refused with one line."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from conftest import DIGITS, ROOT, TINY, run_main
from jaxdiff import build, families
from jaxdiff.build import run_training as train
from jaxdiff.config import load_config
from jaxdiff.discriminator import net_fn_of
from jaxdiff.dg_model import DGModel, with_discriminator
from jaxdiff.errors import JaxdiffError
from jaxdiff.model import Model

DISC = os.path.join(ROOT, "configs", "digits_discriminator.py")
DTINY = ["--config.model.model_channels=8", "--config.training.batch_size=16",
         "--config.training.steps=3", "--config.training.checkpoint_every=3",
         "--config.training.log_every=1"]

pytestmark = pytest.mark.slow  # each test compiles a guided sampler (network + its gradient)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(model workdir, discriminator workdir): a 2-step digits model, 32 of its samples, and a
  3-step discriminator against them."""
  root = tmp_path_factory.mktemp("dgs")
  model = str(root / "model")
  train(load_config(DIGITS, TINY + ["--config.training.steps=2"]), model)
  m = jaxdiff.load(model)
  images, labels = m.sample_with_labels(32, seed=0, steps=3)
  samples = str(root / "samples.npz")
  np.savez(samples, images=images, labels=labels)
  disc = str(root / "disc")
  train(load_config(DISC, DTINY + [f"--config.discriminator.model={model}",
                                   f"--config.discriminator.samples={samples}"]), disc)
  return model, disc


@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m"])
def test_weight_zero_is_the_plain_sampler_and_a_positive_one_changes_it(runs, solver):
  model = jaxdiff.load(runs[0])
  plain = model.sample(8, seed=1, solver=solver, steps=3)
  zero = with_discriminator(model, runs[1], 0.0).sample(8, seed=1, solver=solver, steps=3)
  np.testing.assert_array_equal(zero, plain)
  guided = with_discriminator(model, runs[1], 50.0).sample(8, seed=1, solver=solver, steps=3)
  assert guided.shape == plain.shape and guided.dtype == np.uint8
  assert not np.array_equal(guided, plain)


def test_guided_denoiser_is_d_plus_w_sigma2_grad_logit(runs):
  model = jaxdiff.load(runs[0])
  disc = jaxdiff.load(runs[1], ema=False)
  w = 3.0
  dgm = DGModel(model, disc, w)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  labels = np.array([0, 3, 5, 9])
  one_hot = jax.nn.one_hot(labels, 10)
  loss = disc.exp.family_spec.loss
  net = net_fn_of(disc.graphdef, disc.params)
  for s in (0.01, 1.0, 40.0):
    sigma = jnp.full((4,), s)
    # By hand: ∂/∂x of each sample's logit (one backward per sample, no batch sum).
    grads = jnp.stack([jax.grad(lambda y: loss.logits(net, y[None], sigma[:1],
                                                      one_hot[i:i + 1])[0])(x[i])
                       for i in range(4)])
    want = np.asarray(model.denoise(x, sigma, labels)) + w * s**2 * np.asarray(grads)
    np.testing.assert_allclose(np.asarray(dgm.denoise(x, sigma, labels)), want, rtol=1e-4,
                               atol=1e-4 * s**2)
  # Below the discriminator's σ range (σ_min = 0.0010005): no guidance. The guided program
  # compiles the denoiser beside a gradient, so XLA may fuse it differently: equal to 2 ulp.
  sigma = jnp.full((4,), 5e-4)
  np.testing.assert_array_max_ulp(np.asarray(dgm.denoise(x, sigma, labels)),
                                  np.asarray(model.denoise(x, sigma, labels)), maxulp=2)


def test_cli_equals_python(runs, tmp_path, capsys):
  out = str(tmp_path / "dg.npz")
  code, _, err = run_main(capsys, "sample", "--workdir", runs[0], "--num", "6", "--out", out,
                          "--seed", "2", "--steps", "3", "--discriminator", runs[1],
                          "--dg-weight", "20")
  assert code == 0, err
  want = with_discriminator(jaxdiff.load(runs[0]), runs[1], 20.0).sample(6, seed=2, steps=3)
  np.testing.assert_array_equal(np.load(out)["images"], want)


def _fresh_model(*extra):
  exp = build.experiment(load_config(DIGITS, TINY + list(extra)))
  graphdef, params = families.make_network(exp)
  return Model(exp, graphdef, params)


def test_a_discriminator_of_other_data_is_refused(runs, tmp_path, capsys):
  disc = jaxdiff.load(runs[1], ema=False)
  for extra, needle in ((["--config.data.num_classes=0"], "0 classes"),
                        (["--config.data.resolution=16"], "16x16")):
    with pytest.raises(JaxdiffError, match=needle) as e:
      DGModel(_fresh_model(*extra), disc, 1.0)
    assert "\n" not in str(e.value)
  out = str(tmp_path / "x.npz")
  # A workdir that is not a discriminator, and --dg-weight without one: exit 2, nothing written.
  for args, needle in ((["--discriminator", runs[0]], "'plain' workdir"),
                       (["--dg-weight", "1"], "needs --discriminator")):
    code, _, err = run_main(capsys, "sample", "--workdir", runs[0], "--num", "2", "--out", out,
                            "--steps", "3", *args)
    assert code == 2 and needle in err.strip().splitlines()[-1], err
    assert not os.path.exists(out)


def test_a_trained_discriminator_loads_without_its_training_inputs(runs):
  """The samples file and model are checked when training starts, not on every load."""
  samples = os.path.join(os.path.dirname(runs[1]), "samples.npz")
  moved = samples + ".moved"
  os.rename(samples, moved)
  try:
    disc = jaxdiff.load(runs[1], ema=False)
    assert disc.exp.family == "discriminator"
    with pytest.raises(JaxdiffError, match="does not exist"):
      train(load_config(DISC, DTINY + ["--config.training.steps=4",
                                       f"--config.discriminator.model={runs[0]}",
                                       f"--config.discriminator.samples={samples}"]), runs[1])
  finally:
    os.rename(moved, samples)
