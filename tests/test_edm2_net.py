"""EDM2 magnitude-preserving U-Net: reference parameter counts, MP operations against float64
NumPy, forced weight normalisation, structure, forward contract."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxdiff import build
from jaxdiff.config import load_config
from jaxdiff.errors import JaxdiffError
from jaxdiff.info import count_params
from jaxdiff.nets import build_network
from jaxdiff.nets import edm2 as E


# Reference counts (issue 12 / shared/REFERENCE.md §5): networks_edm2.Precond, 1000 classes.
@pytest.mark.parametrize("config,overrides,expected", [
    ("configs/imagenet64_edm2_xs.py", [], 124_710_949),
    ("configs/imagenet64_edm2_s.py", [], 280_209_381),
    ("configs/imagenet512_edm2_xs.py", [], 124_713_253),
    ("configs/imagenet512_edm2_xs.py", ["--config.model.model_channels=192"], 280_212_837),
])
def test_parameter_count_equals_reference(config, overrides, expected):
  cfg = load_config(config, overrides)
  _, params = build.abstract_network(cfg)  # jax.eval_shape: nothing allocated
  assert count_params(params) == expected


@pytest.mark.parametrize("config,overrides,expected", [
    ("configs/imagenet64_edm2_xs.py", [], 124_710_949),
    ("configs/imagenet64_edm2_s.py", [], 280_209_381),
    ("configs/imagenet512_edm2_xs.py", [], 124_713_253),
])
def test_info_json_gives_the_reference_counts(config, overrides, expected, capsys):
  """`jaxdiff info --json` itself (weights as ShapeDtypeStructs; the GFLOPs from the lowering)."""
  import json

  from jaxdiff.cli import main
  assert main(["info", "--config", config, "--json", *overrides]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info["params"] == expected and sum(info["params_by_part"].values()) == expected
  assert info["gflops_per_forward"] > 0


def test_configs_hold_the_reference_presets():
  xs, s = load_config("configs/imagenet64_edm2_xs.py"), load_config("configs/imagenet64_edm2_s.py")
  l512 = load_config("configs/imagenet512_edm2_xs.py")
  assert (xs.training.lr, xs.edm2.ref_batches, xs.model.dropout) == (0.0120, 35000, 0.0)
  assert (s.training.lr, s.model.model_channels) == (0.0100, 192)
  assert (xs.loss.P_mean, xs.loss.P_std, l512.loss.P_mean, l512.loss.P_std) == (-0.8, 1.6, -0.4, 1.0)
  assert (l512.edm2.ref_batches, l512.data.channels, l512.data.resolution) == (70000, 4, 64)
  assert xs.training.batch_size == 2048 and tuple(xs.edm2.ema_stds) == (0.05, 0.10)
  assert xs.training.lr_rampup_images == 10_000_000 and xs.optimizer.beta2 == 0.99


def test_mp_operations_match_float64():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((5, 6)).astype(np.float32)
  b = rng.standard_normal((5, 3)).astype(np.float32)
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  np.testing.assert_allclose(np.asarray(E.mp_silu(jnp.asarray(a))),
                             a64 / (1 + np.exp(-a64)) / 0.596, rtol=1e-5)
  t = 0.3
  np.testing.assert_allclose(np.asarray(E.mp_sum(jnp.asarray(a), jnp.asarray(a[::-1]), t)),
                             ((1 - t) * a64 + t * a64[::-1]) / np.sqrt(0.49 + 0.09), rtol=1e-5)
  got = np.asarray(E.mp_cat(jnp.asarray(a), jnp.asarray(b), t=0.5))
  C = np.sqrt(9 / 0.5)
  want = np.concatenate([a64 * C / np.sqrt(6) * 0.5, b64 * C / np.sqrt(3) * 0.5], axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # normalize: per last-axis slice over the other axes, eps + ‖x‖/√N
  w = rng.standard_normal((3, 3, 4, 7)).astype(np.float32)
  norm = np.sqrt((w.astype(np.float64) ** 2).sum(axis=(0, 1, 2), keepdims=True))
  np.testing.assert_allclose(np.asarray(E.normalize(jnp.asarray(w))),
                             w / (1e-4 + norm / np.sqrt(36)), rtol=1e-5)


def test_mp_operations_preserve_magnitude():
  x = jax.random.normal(jax.random.key(0), (4096, 64))
  y = jax.random.normal(jax.random.key(1), (4096, 32))
  rms = lambda v: float(jnp.sqrt(jnp.mean(v**2)))  # noqa: E731
  assert abs(rms(E.mp_sum(x, x[::-1], 0.3)) - 1) < 0.02
  assert abs(rms(E.mp_cat(x, y, t=0.5)) - 1) < 0.02
  assert abs(rms(E.mp_silu(x)) - 1) < 0.03
  conv = E.MPConv(64, 48, 0, rngs=nnx.Rngs(0))
  assert abs(rms(conv(x)) - 1) < 0.05


def test_mpfourier_and_mpconv_against_numpy():
  freqs, phases = E.fourier_constants(8, seed=3)
  assert (freqs, phases) == E.fourier_constants(8, seed=3) and freqs != E.fourier_constants(8, 4)[0]
  assert all(0 <= p < 2 * np.pi for p in phases)
  c = np.array([-1.2, 0.0, 0.7], np.float32)
  got = np.asarray(E.MPFourier(freqs, phases)(jnp.asarray(c)))
  chex.assert_shape(got, (3, 8))
  want = np.sqrt(2) * np.cos(np.outer(c, np.float32(freqs)).astype(np.float64) + np.float32(phases))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # 3x3 convolution: HWIO weight, normalised per output channel, times gain / sqrt(fan_in)
  conv = E.MPConv(2, 3, 3, rngs=nnx.Rngs(1))
  w = np.asarray(conv.weight[...], np.float64)
  wn = w / (1e-4 + np.sqrt((w**2).sum(axis=(0, 1, 2), keepdims=True)) / np.sqrt(18))
  wn = wn * 0.7 / np.sqrt(18)
  x = np.random.default_rng(0).standard_normal((1, 5, 5, 2))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = np.zeros((1, 5, 5, 3))
  for i in range(5):
    for j in range(5):
      ref[0, i, j] = np.einsum("hwi,hwio->o", xp[0, i:i + 3, j:j + 3], wn)
  np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x, jnp.float32), gain=0.7)), ref,
                             rtol=1e-4, atol=1e-5)


def _tiny(**kw):
  base = dict(arch="edm2", model_channels=16, channel_mult=(1, 2), num_blocks=1,
              attn_resolutions=(4,), channels_per_head=8, dropout=0.0, logvar_channels=8)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _build(cfg, label_dim=10, seed=0, res=8, ch=3):
  return build_network(cfg, img_resolution=res, img_channels=ch, label_dim=label_dim,
                       rngs=nnx.Rngs(seed))


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("train", "return_logvar"))
def _apply(graphdef, params, x, c, y, train=False, key=None, return_logvar=False):
  rngs = nnx.Rngs(dropout=key) if key is not None else None
  return nnx.merge(graphdef, params)(x, c, y, train=train, rngs=rngs, return_logvar=return_logvar)


def test_structure_follows_the_reference():
  net = nnx.eval_shape(lambda: _build(_tiny()))
  u = net.unet
  assert u.enc_order == ("8x8_conv", "8x8_block0", "4x4_down", "4x4_block0")
  assert u.dec_order == ("4x4_in0", "4x4_in1", "4x4_block0", "4x4_block1", "8x8_up",
                         "8x8_block0", "8x8_block1")
  assert [u.dec[n].num_heads for n in u.dec_order] == [4, 0, 4, 4, 0, 0, 0]
  assert u.enc["8x8_conv"].weight.shape == (3, 3, 4, 16)  # image + the constant-ones channel
  assert u.enc["4x4_block0"].conv_skip.weight.shape == (1, 1, 16, 32)
  assert u.dec["4x4_block0"].conv_res0.weight.shape == (3, 3, 64, 32)  # dec: conv_res0 from cin
  assert u.emb_label.weight.shape == (10, 32) and u.emb_noise.weight.shape == (16, 32)
  assert net.logvar_linear.weight.shape == (8, 1) and len(net.logvar_fourier.freqs) == 8
  assert u.out_gain.shape == () and u.enc["8x8_block0"].emb_gain.shape == ()
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(net, nnx.Param))[0]
  names = {E._leaf_name(p) for p, _ in leaves}
  assert names == {"weight", "emb_gain", "out_gain"}  # no biases, no norms, no buffers
  # MPFourier constants are static: they are not parameters
  assert count_params(nnx.state(net, nnx.Param)) == sum(int(np.prod(v.shape)) for _, v in leaves)


@pytest.mark.slow
def test_forward_contract_and_zero_output_at_init():
  net = _build(_tiny())
  graphdef, params = nnx.split(net, nnx.Param)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  c = jnp.array([-1.0, 0.5])
  y = jax.nn.one_hot(jnp.array([1, 7]), 10)
  F, lv = _apply(graphdef, params, x, c, y, return_logvar=True)
  chex.assert_shape(F, (2, 8, 8, 3))
  chex.assert_shape(lv, (2,))
  chex.assert_type([F, lv], jnp.float32)
  assert not np.any(np.asarray(F))  # out_gain starts at 0
  # logvar: MPConv(MPFourier(c_noise)) computed by hand
  f = np.asarray(net.logvar_fourier(c), np.float64)
  w = np.asarray(net.logvar_linear.weight[...], np.float64)
  wn = w / (1e-4 + np.linalg.norm(w, axis=0) / np.sqrt(8)) / np.sqrt(8)
  np.testing.assert_allclose(np.asarray(lv), (f @ wn)[:, 0], rtol=1e-5)
  # with gains set, labels and noise level matter; None labels = the all-zero label (reference)
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.full_like(v, 0.5) if v.ndim == 0 else v, params)
  F1 = _apply(graphdef, params, x, c, y)
  F2 = _apply(graphdef, params, x, c, jax.nn.one_hot(jnp.array([2, 7]), 10))
  F0 = _apply(graphdef, params, x, c, None)
  F0z = _apply(graphdef, params, x, c, jnp.zeros((2, 10)))
  assert np.abs(np.asarray(F1)).max() > 0
  assert not np.allclose(F1[0], F2[0]) and np.allclose(F1[1], F2[1], atol=1e-6)
  np.testing.assert_allclose(np.asarray(F0), np.asarray(F0z), atol=1e-6)
  # unconditional network
  g_u, p_u = nnx.split(_build(_tiny(), label_dim=0), nnx.Param)
  chex.assert_shape(_apply(g_u, p_u, x, c, None), (2, 8, 8, 3))


@pytest.mark.slow
def test_force_normalize_and_scale_invariance():
  net = _build(_tiny())
  graphdef, params = nnx.split(net, nnx.Param)
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.full_like(v, 0.7) if v.ndim == 0 else v * 3.0, params)
  normed = E.force_normalize(params)
  for path, v in jax.tree_util.tree_flatten_with_path(normed)[0]:
    v = np.asarray(v, np.float64)
    if E._leaf_name(path) == "weight":
      fan_in = int(np.prod(v.shape[:-1]))
      norms = np.sqrt((v**2).reshape(-1, v.shape[-1]).sum(axis=0))
      np.testing.assert_allclose(norms, np.sqrt(fan_in), rtol=1e-3)  # eps shrinks it by ~1e-4
    else:
      assert float(v) == pytest.approx(0.7)  # gains untouched
  # same structure and dtypes (nnx.State in, nnx.State out)
  chex.assert_trees_all_equal_shapes_and_dtypes(params, normed)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  c = jnp.array([-1.0, 0.5])
  y = jax.nn.one_hot(jnp.array([1, 7]), 10)
  F, lv = _apply(graphdef, params, x, c, y, return_logvar=True)
  Fn, lvn = _apply(graphdef, normed, x, c, y, return_logvar=True)
  # the forward normalises anyway: the outputs barely move (only through eps, ~1e-4 per layer)
  rel = lambda a, b: float(np.abs(np.asarray(a) - b).max() / np.abs(np.asarray(b)).max())  # noqa: E731
  assert rel(Fn, F) < 3e-3 and rel(lvn, lv) < 1e-3
  # and a pure dict works as well
  pure = E.force_normalize(nnx.to_pure_dict(params))
  np.testing.assert_allclose(np.asarray(pure["unet"]["out_conv"]["weight"]),
                             np.asarray(normed["unet"]["out_conv"]["weight"][...]), rtol=1e-6)


@pytest.mark.slow
def test_dropout_and_bfloat16():
  net = _build(_tiny(dropout=0.5))
  graphdef, params = nnx.split(net, nnx.Param)
  params = jax.tree.map(lambda v: jnp.full_like(v, 0.5) if v.ndim == 0 else v, params)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  c = jnp.array([-1.0, 0.5])
  y = jax.nn.one_hot(jnp.array([1, 7]), 10)
  a = _apply(graphdef, params, x, c, y, train=True, key=jax.random.key(1))
  b = _apply(graphdef, params, x, c, y, train=True, key=jax.random.key(2))
  e = _apply(graphdef, params, x, c, y)
  assert not np.allclose(a, b) and not np.allclose(a, e)
  g16, p16 = nnx.split(_build(_tiny(dtype="bfloat16")), nnx.Param)
  p16 = jax.tree.map(lambda v: jnp.full_like(v, 0.5) if v.ndim == 0 else v, p16)
  out = _apply(g16, p16, x, c, y)
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)


def test_builder_errors():
  with pytest.raises(JaxdiffError, match="precond.name=edm"):
    _build(_tiny(out_channels_factor=2))
  with pytest.raises(JaxdiffError, match="label dropout"):
    _build(_tiny(label_dropout=0.1))
  with pytest.raises(JaxdiffError, match="needs 16"):
    _build(_tiny(emb_fourier_freqs=[1.0] * 3, emb_fourier_phases=[0.0] * 3))
  with pytest.raises(JaxdiffError, match="go together"):
    _build(_tiny(logvar_fourier_freqs=[1.0] * 8))
  net = _build(_tiny())
  with pytest.raises(JaxdiffError, match="augmentation"):
    net(jnp.zeros((1, 8, 8, 3)), jnp.zeros(1), None, jnp.zeros((1, 9)))
