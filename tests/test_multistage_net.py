"""Multi-stage U-Net: reference parameter counts, and each σ reaching its stage's decoder."""

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxdiff import build, precond as precond_lib, sampling
from jaxdiff.config import load_config
from jaxdiff.errors import JaxdiffError
from jaxdiff.nets.multistage import MultiStageUNet, build_multistage, c_noise_boundaries
from jaxdiff.denoiser import make_denoiser

BOUNDS = (0.5, 2.0)


def tiny_net(decoders=(12, 8, 4), bounds=BOUNDS, seed=0):
  return MultiStageUNet(img_resolution=8, in_channels=1, out_channels=1, label_dim=3,
                        model_channels=8, decoder_channels=decoders,
                        c_noise_boundaries=c_noise_boundaries(bounds), channel_mult=(1, 2),
                        num_blocks=1, attn_resolutions=(4,), dropout=0.0, num_groups=4,
                        rngs=nnx.Rngs(params=seed))


def constant_decoders(net):
  """Decoder k outputs the constant k + 1 everywhere (last conv: zero weight, bias k + 1)."""
  for k, dec in enumerate(net.decoders()):
    dec.out_conv.weight[...] = jnp.zeros_like(dec.out_conv.weight[...])
    dec.out_conv.bias[...] = jnp.full_like(dec.out_conv.bias[...], k + 1.0)
  return net


def numpy_stage(sigma, bounds):
  return np.searchsorted(np.asarray(bounds, np.float64), np.asarray(sigma, np.float64),
                         side="right")


def test_cifar_config_parameter_count_matches_reference():
  cfg = load_config("configs/cifar10_multistage.py")
  _, params = build.abstract_network(cfg)  # shapes only: nothing materialised
  parts = {k: sum(math.prod(x.shape) for x in jax.tree.leaves(v)) for k, v in params.items()}
  total = sum(parts.values())
  assert abs(total / 128.79e6 - 1) < 0.005, total
  shared = parts["embedding"] + parts["encoder"]
  assert abs(shared / 19.63e6 - 1) < 0.005, shared
  for k, ref in enumerate((68.28e6, 36.10e6, 4.77e6)):
    assert abs(parts[f"decoder_{k}"] / ref - 1) < 0.005, (k, parts[f"decoder_{k}"])
  assert set(parts) == {"embedding", "encoder", "decoder_0", "decoder_1", "decoder_2"}


def test_each_sigma_reaches_its_decoder_in_the_network():
  net = constant_decoders(tiny_net())
  sigmas = np.array([0.002, 0.1, 0.4999, 0.5001, 1.0, 1.999, 2.0001, 10.0, 80.0], np.float32)
  x = jnp.zeros((2, 8, 8, 1))
  for s in sigmas:
    c_noise = jnp.full((2,), np.log(s) / 4, jnp.float32)  # EDM c_noise
    out = jax.jit(lambda n, c: n(x, c))(net, c_noise)
    chex.assert_shape(out, (2, 8, 8, 1))
    chex.assert_type(out, jnp.float32)
    np.testing.assert_array_equal(np.asarray(out), numpy_stage(s, BOUNDS) + 1.0)


def test_sampler_sigmas_reach_their_decoder_through_the_denoiser():
  net = constant_decoders(tiny_net())
  graphdef, params = nnx.split(net, nnx.Param)
  pre = precond_lib.EDMPrecond(sigma_data=0.5)
  denoise = jax.jit(lambda p, x, s: make_denoiser(graphdef, p, pre)(x, s))
  grid = np.asarray(sampling.karras_sigmas(18, 0.002, 80.0, 7.0), np.float64)[:-1]  # drop σ=0
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 8, 8, 1)), jnp.float32)
  seen = set()
  for s in grid:
    D = np.asarray(denoise(params, x, jnp.full((3,), s, jnp.float32)), np.float64)
    k = int(numpy_stage(np.float32(s), BOUNDS))
    seen.add(k)
    sd = 0.5
    expect = sd**2 / (s**2 + sd**2) * np.asarray(x, np.float64) + s * sd / np.sqrt(s**2 + sd**2) * (k + 1)
    np.testing.assert_allclose(D, expect, rtol=1e-5, atol=1e-5)
  assert seen == {0, 1, 2}


def test_switch_runs_one_branch_and_matches_static_stage():
  net = tiny_net()
  for dec in net.decoders():  # non-trivial outputs
    dec.out_conv.weight[...] = dec.out_conv.weight[...] * 1e4
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 1)), jnp.float32)
  jaxpr = str(jax.make_jaxpr(lambda c: net(x, c))(jnp.zeros((2,))))
  assert "cond[" in jaxpr or "switch" in jaxpr or " cond " in jaxpr
  for k, s in enumerate((0.1, 1.0, 5.0)):
    c = jnp.full((2,), np.log(s) / 4, jnp.float32)
    a = net(x, c)
    b = net(x, c, stage=k)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    if k:
      assert not np.allclose(np.asarray(net(x, c, stage=k - 1)), np.asarray(a))


def test_builder_and_bad_boundaries():
  m = ml_collections.ConfigDict(dict(arch="multistage", model_channels=8, decoder_channels=(8, 4),
                                     stage_boundaries=(1.0,), channel_mult=(1,), num_blocks=1,
                                     attn_resolutions=(), num_groups=2))
  net = nnx.eval_shape(lambda: build_multistage(m, img_resolution=8, img_channels=1, label_dim=0,
                                                rngs=nnx.Rngs(0)))
  assert net.num_stages == 2 and net.c_noise_boundaries == (0.0,)  # ln(1)/4
  m.stage_boundaries = (1.0, 2.0)
  with pytest.raises(JaxdiffError, match="one fewer"):
    build_multistage(m, img_resolution=8, img_channels=1, label_dim=0, rngs=nnx.Rngs(0))
  with pytest.raises(JaxdiffError, match="increasing"):
    c_noise_boundaries((2.0, 1.0))


def test_info_per_stage_gflops_and_nfe_weighting():
  from jaxdiff.multistage.info import multistage_info
  from jaxdiff import build
  # The EDM sampler, set here (the digits configs sample with iPNDM by default).
  cfg = load_config("configs/digits_multistage.py",
                    ["--config.sampler.solver=heun", "--config.sampler.num_steps=18"])
  info = multistage_info(build.experiment(cfg))
  g = info["gflops_per_stage"]
  assert len(g) == 3 and g[0] > g[1] > g[2] > 0  # decoders 48 / 32 / 8 channels
  # Heun, 18 steps: a call at σ_0..σ_17 and a correction at σ_1..σ_17 (σ_18 = 0): 35 calls.
  N, rho, smin, smax = 18, 7.0, 0.002, 80.0
  i = np.arange(N)
  grid = (smax ** (1 / rho) + i / (N - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
  calls = np.concatenate([grid, grid[1:]])
  k = numpy_stage(calls.astype(np.float32), cfg.model.stage_boundaries)
  counts = np.bincount(k, minlength=3)
  assert info["sampler"]["nfe"] == 35
  assert info["sampler"]["calls_per_stage"] == counts.tolist()
  np.testing.assert_allclose(info["nfe_weighted_gflops"], np.dot(counts, g) / 35, rtol=1e-9)
