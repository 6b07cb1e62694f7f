"""Multi-stage training: stage masses, restricted σ, and idle decoders left untouched."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff import losses, precond as precond_lib
from jaxdiff.errors import JaxdiffError
from jaxdiff.multistage import stages
from jaxdiff.denoiser import make_denoiser
from jaxdiff.multistage.step import (MultiStageConfig, StageDispatch, multistage_train_step,
                                     partitioned_adam)
from jaxdiff.nets.multistage import MultiStageUNet, c_noise_boundaries
from jaxdiff.train.state import init_state
from jaxdiff.train.step import StepConfig

BOUNDS = (0.5, 2.0)
LOSS = losses.EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=0.5)


def phi(z):
  return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_stage_probabilities_closed_form_and_reference_shares():
  p = stages.stage_probabilities(LOSS, (2.5103, 7.6577))
  c = [phi((math.log(b) + 1.2) / 1.2) for b in (2.5103, 7.6577)]
  np.testing.assert_allclose(p, [c[0], c[1] - c[0], 1 - c[1]], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(p, [0.961, 0.035, 0.0035], rtol=0.05)  # REFERENCE.md §2


def test_restricted_sigma_stays_in_its_stage_and_follows_the_lognormal():
  key = jax.random.PRNGKey(0)
  for k, (lo, hi) in enumerate(stages.stage_intervals(BOUNDS)):
    s = stages.sample_stage_sigma(LOSS, jax.random.fold_in(key, k), jnp.int32(k), BOUNDS, (4000,))
    chex.assert_shape(s, (4000,))
    chex.assert_type(s, jnp.float32)
    s = np.asarray(s, np.float64)
    assert np.all(s >= lo) and np.all(s < hi)
    np.testing.assert_array_equal(np.asarray(stages.stage_of_sigma(s.astype(np.float32), BOUNDS)), k)
    # Empirical CDF at an interior point vs the truncated log-normal's (float64 closed form).
    a = phi((math.log(lo) + 1.2) / 1.2) if lo > 0 else 0.0
    b = phi((math.log(hi) + 1.2) / 1.2) if math.isfinite(hi) else 1.0
    q = float(np.median(s))
    expect = (phi((math.log(q) + 1.2) / 1.2) - a) / (b - a)
    assert abs(expect - 0.5) < 0.03


def test_draw_stage_frequencies():
  probs = (0.6, 0.3, 0.1)
  draws = jax.vmap(lambda k: stages.draw_stage(k, probs))(jax.random.split(jax.random.PRNGKey(1), 20000))
  freq = np.bincount(np.asarray(draws), minlength=3) / 20000
  np.testing.assert_allclose(freq, probs, atol=0.015)


def test_stratified_counts():
  # 1 each, then 61 by largest remainder: floors 58, 2, 0 (+1 to the largest remainder, 0.62).
  assert stages.stratified_counts((0.961, 0.035, 0.004), 64) == (60, 3, 1)
  for b in (3, 7, 64, 100):
    c = stages.stratified_counts((0.5, 0.3, 0.2), b)
    assert sum(c) == b and min(c) >= 1
  with pytest.raises(JaxdiffError):
    stages.stratified_counts((0.5, 0.5, 0.0), 2)


def _net_params(constant=True):
  net = MultiStageUNet(img_resolution=4, in_channels=1, out_channels=1, label_dim=0,
                       model_channels=4, decoder_channels=(8, 4, 4),
                       c_noise_boundaries=c_noise_boundaries(BOUNDS), channel_mult=(1,),
                       num_blocks=1, attn_resolutions=(), dropout=0.0, num_groups=1,
                       rngs=nnx.Rngs(params=0))
  for k, dec in enumerate(net.decoders()):  # distinguishable decoders: output k + 1 everywhere
    if constant:  # (else the output still depends on the encoder, so it gets gradients)
      dec.out_conv.weight[...] = jnp.zeros_like(dec.out_conv.weight[...])
    dec.out_conv.bias[...] = jnp.full_like(dec.out_conv.bias[...], k + 1.0)
  return nnx.split(net, nnx.Param)


@functools.cache
def _step(mode, probs, dispatch):
  """(optimizer, step) for a step config; cached, so that the tests of this file trace and
  compile each program once (the parameter values do not enter the program)."""
  graphdef, _ = _net_params()
  opt = partitioned_adam(1e-2, 8, 1.0)
  cfg = StepConfig(graphdef=graphdef, precond=precond_lib.EDMPrecond(), loss=LOSS, optimizer=opt,
                   label_dim=0, batch_size=8, ema_halflife_images=100.0, ema_rampup_ratio=None)
  counts = stages.stratified_counts(probs, 8) if mode == "stratified" else ()
  ms = MultiStageConfig(BOUNDS, probs, mode, counts)
  step = (StageDispatch(cfg, ms) if dispatch
          else jax.jit(lambda s, b: multistage_train_step(cfg, ms, s, b)))
  return opt, step


def _setup(mode="stochastic", probs=(1 / 3, 1 / 3, 1 / 3), constant=True, dispatch=False):
  graphdef, params = _net_params(constant)
  opt, step = _step(mode, probs, dispatch)
  return graphdef, params, init_state(params, opt, 0), step


def _leaves_by_part(tree, part):
  return [v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
          if any(getattr(e, "key", None) == part for e in p)]


def _same(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_training_denoiser_routes_sigma_to_the_stage_decoder():
  graphdef, params, _, _ = _setup()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 4, 1)), jnp.float32)
  for k in range(3):
    s = stages.sample_stage_sigma(LOSS, jax.random.PRNGKey(k), jnp.int32(k), BOUNDS, (2,))
    D = make_denoiser(graphdef, params, precond_lib.EDMPrecond(), stage=jnp.int32(k),
                      train=True)(x, s)
    s64 = np.asarray(s, np.float64)[:, None, None, None]
    expect = 0.25 / (s64**2 + 0.25) * np.asarray(x) + s64 * 0.5 / np.sqrt(s64**2 + 0.25) * (k + 1)
    np.testing.assert_allclose(np.asarray(D), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dispatch", [False, True], ids=["switch", "dispatch"])
def test_idle_decoders_and_their_adam_state_are_untouched(dispatch):
  _, _, state, step = _setup(constant=False, dispatch=dispatch)
  batch = {"image": jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 4, 4, 1)), jnp.float32),
           "label": jnp.zeros((8,), jnp.int32)}
  seen = set()
  for _ in range(12):
    new, m = step(state, batch)
    k = int(m["stage"])
    seen.add(k)
    assert np.isfinite(float(m["loss"]))
    for j in range(3):
      part = f"decoder_{j}"
      p_same = _same(_leaves_by_part(new.params, part), _leaves_by_part(state.params, part))
      o_same = _same(_leaves_by_part(new.opt_state, part), _leaves_by_part(state.opt_state, part))
      assert o_same == (j != k), (j, k)
      if int(state.step) > 0:  # the lr ramp-up gives lr = 0 on step 0, as the reference
        assert p_same == (j != k), (j, k)
    if int(state.step) > 0:
      assert not _same(_leaves_by_part(new.params, "encoder"),
                       _leaves_by_part(state.params, "encoder"))
    state = new
  assert seen == {0, 1, 2}
  # Per-part Adam: each decoder's bias-correction count is the number of steps it was trained.
  counts = {part: int(np.asarray(_leaves_by_part(state.opt_state, part)[0]))
            for part in ("decoder_0", "decoder_1", "decoder_2", "encoder")}
  assert counts["encoder"] == 12
  assert counts["decoder_0"] + counts["decoder_1"] + counts["decoder_2"] == 12


def test_stage_dispatch_makes_the_switch_steps_draws_and_updates():
  _, _, s_switch, switch = _setup(constant=False)
  _, _, s_dispatch, dispatch = _setup(constant=False, dispatch=True)
  rng = np.random.default_rng(1)
  for _ in range(6):
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (8, 4, 4, 1)), jnp.float32),
             "label": jnp.zeros((8,), jnp.int32)}
    s_switch, m_switch = switch(s_switch, batch)
    s_dispatch, m_dispatch = dispatch(s_dispatch, batch)
    assert int(m_switch["stage"]) == int(m_dispatch["stage"])
    chex.assert_type(m_dispatch["stage"], jnp.int32)
    np.testing.assert_allclose(float(m_dispatch["loss"]), float(m_switch["loss"]), rtol=1e-5)
  # Float rounding differs between the two programs and Adam rescales it (lr 1e-2 here: 2.5e-5
  # seen); a wrong decoder or stage would move parameters by ~lr.
  chex.assert_trees_all_close(s_dispatch.params, s_switch.params, rtol=1e-4, atol=1e-4)


def test_stratified_updates_every_decoder():
  _, _, state, step = _setup("stratified", constant=False)
  batch = {"image": jnp.zeros((8, 4, 4, 1), jnp.float32), "label": jnp.zeros((8,), jnp.int32)}
  state, _ = step(state, batch)  # step 0 has lr = 0 (ramp-up)
  new, m = step(state, batch)
  assert int(m["stage"]) == -1
  for j in range(3):
    part = f"decoder_{j}"
    assert not _same(_leaves_by_part(new.params, part), _leaves_by_part(state.params, part))


@pytest.mark.slow  # end to end through the CLI: per-stage programs, checkpoints, resume, sampling
def test_cli_trains_resumes_and_samples_a_multistage_model(tmp_path, capsys):
  import json
  import os

  from conftest import ROOT
  from jaxdiff.cli import main  # in process: no interpreter start per command
  config = os.path.join(ROOT, "configs", "digits_multistage.py")
  small = ["--config.model.model_channels=8", "--config.model.decoder_channels=(8,8,4)",
           "--config.model.channel_mult=(1,)", "--config.model.num_blocks=1",
           "--config.model.attn_resolutions=()", "--config.model.stage_boundaries=(0.5,2.0)",
           "--config.training.batch_size=16", "--config.training.checkpoint_every=3",
           "--config.training.log_every=1", "--config.training.sample_every=0",
           "--config.sampler.num_steps=3"]
  workdir = str(tmp_path / "ms")
  assert main(["train", "--config", config, "--workdir", workdir, "--json",
               "--config.training.steps=3", *small]) == 0
  assert json.loads(capsys.readouterr().out)["steps"] == 3
  assert main(["train", "--config", config, "--workdir", workdir, "--json",
               "--config.training.steps=6", *small]) == 0
  out, err = capsys.readouterr()
  assert "resuming" in err and json.loads(out)["start_step"] == 3
  samples = tmp_path / "s.npz"
  assert main(["sample", "--workdir", workdir, "--num", "6", "--out", str(samples)]) == 0
  data = np.load(samples)
  assert data["images"].shape == (6, 8, 8, 1) and data["images"].dtype == np.uint8
