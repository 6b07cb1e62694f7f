"""Timestep-aware W8A8 calibration (jaxdiff.quant.calibrate): the calibration set is the denoiser's
inputs along the model's own sampler, one entry per network evaluation, and the static ranges
qwix stores are computed from exactly those inputs."""

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from conftest import DIGITS, TINY

NUM = 4


@pytest.fixture(scope="module")
def model():
  """A tiny digits UNet with random weights (calibration needs no training)."""
  from jaxdiff import build, families
  from jaxdiff.config import load_config
  from jaxdiff.model import Model
  exp = build.experiment(load_config(DIGITS, TINY))
  graphdef, params = families.make_network(exp, 0)
  return Model(exp, graphdef, params)


@pytest.mark.parametrize("solver,steps", [("heun", 3), ("ipndm", 3), ("euler", 2)])
def test_one_visit_per_network_evaluation_on_the_sampler_grid(model, solver, steps):
  from jaxdiff import sampling
  from jaxdiff.model import sample_keys
  from jaxdiff.quant import calibrate
  visits = calibrate.trajectory_visits(model, NUM, seed=3, solver=solver, steps=steps)
  assert len(visits) == sampling.nfe(solver, steps)
  grid = np.asarray(sampling.karras_sigmas(steps, 0.002, 80.0, 7.0), np.float64)
  # Heun evaluates at σ_i and again at σ_{i+1} (except the last step); the others once at σ_i.
  want = ([grid[0]] + [s for s in grid[1:-1] for _ in range(2)] if solver == "heun"
          else list(grid[:-1]))
  got = [float(v.sigma[0]) for v in visits]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for v in visits:
    chex.assert_shape(v.x, (NUM, *model.shape))
    chex.assert_type(v.x, np.float32)
    chex.assert_shape(v.sigma, (NUM,))
    assert np.all(v.sigma == v.sigma[0])
    chex.assert_shape(v.class_labels, (NUM, model.label_dim))
    np.testing.assert_array_equal(v.class_labels.argmax(-1), np.arange(NUM) % model.label_dim)
  # The first visit is the sampler's start: the seed's latents (as `jaxdiff sample` draws them)
  # times σ_max; later ones move off it.
  keys = sample_keys(3, 0, NUM)
  latents = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), model.shape))(keys)
  np.testing.assert_allclose(visits[0].x, np.asarray(latents) * 80.0, rtol=1e-6)
  assert not np.allclose(visits[-1].x, visits[0].x * visits[-1].sigma[0] / 80.0)


def test_network_inputs_are_c_in_x_and_c_noise(model):
  """EDM: x_in = x / √(σ² + σ_data²), c_noise = ln(σ)/4, checked in float64."""
  from jaxdiff.quant import calibrate
  visits = calibrate.trajectory_visits(model, NUM, seed=0)
  sd = model.precond.sigma_data
  for v, (x_in, c_noise, labels) in zip(visits, calibrate.network_inputs(model.precond, visits)):
    s = v.sigma.astype(np.float64)
    np.testing.assert_allclose(np.asarray(x_in), v.x / np.sqrt(s**2 + sd**2)[:, None, None, None],
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(c_noise), np.log(s) / 4, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(labels), v.class_labels)


def test_static_ranges_come_from_the_trajectory_inputs(model):
  """qwix's static range of the first conv (whose input is the network input x_in itself): the
  per-sample absmax of x_in, averaged over the batch and over the calibration entries (qwix's
  SimpleMovingAverage), scale = absmax / 127.5. Hand-computed in NumPy from the visits."""
  from jaxdiff.cli.quantize import calibration_set
  from jaxdiff.quant import QuantSpec, calibrate, quantize
  rec, calib_fn = calibration_set(model, NUM, 0)
  assert rec["nfe"] == len(list(calib_fn())) == 3  # ipndm, 3 steps (TINY)
  assert rec["sigmas"][0] == pytest.approx(80.0) and rec["sigmas"][-1] < 1.0
  _, qp = quantize(model.graphdef, model.params, QuantSpec(8, activations=True), calib_fn,
                   shape=model.shape, label_dim=model.label_dim)
  flat = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(qp)}
  scale = flat["conv_in/conv_general_dilated0_lhs_scale/array"]
  visits = calibrate.trajectory_visits(model, NUM, 0)
  sd = model.precond.sigma_data
  absmax = [np.abs(v.x.astype(np.float64) / np.sqrt(v.sigma.astype(np.float64)**2 + sd**2)
                   [:, None, None, None]).reshape(NUM, -1).max(1).mean() for v in visits]
  chex.assert_shape(scale, (1, 1, 1, 1))
  np.testing.assert_allclose(scale.reshape(()), np.mean(absmax) / 127.5, rtol=1e-5)
  # Not the range of one noise level: the entries differ and the average is between them.
  assert min(absmax) < np.mean(absmax) < max(absmax)
  # Every conv / linear has a range (and the decoder's concat inputs two).
  from jaxdiff.quant import weight_layers
  for layer in weight_layers(model.params):
    assert any(k.startswith(layer + "/") and "_lhs_scale" in k for k in flat), layer
  assert any("_lhs_b_scale" in k for k in flat)


def test_calib_num_checked(model):
  from jaxdiff.errors import JaxdiffError
  from jaxdiff.quant import calibrate
  with pytest.raises(JaxdiffError, match="--calib-num must be an integer >= 1"):
    calibrate.trajectory_visits(model, 0)
