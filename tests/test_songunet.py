"""SongUNet (DDPM++ / NCSN++): parameter counts of the reference, structure, forward contract."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxdiff.config import load_config
from jaxdiff.errors import JaxdiffError
from jaxdiff.nets import build_network
from jaxdiff.nets.layers import Conv2d, Linear, UNetBlock, count_params
from jaxdiff.nets.songunet import SongUNet


def _abstract(cfg_path, overrides=()):
  cfg = load_config(cfg_path, list(overrides))
  return nnx.eval_shape(lambda: build_network(
      cfg.model, img_resolution=cfg.data.resolution, img_channels=cfg.data.channels,
      label_dim=cfg.data.num_classes, rngs=nnx.Rngs(0)))


# Reference counts: shared/REFERENCE.md, measured by building the reference's PyTorch networks.
@pytest.mark.parametrize("config,overrides,expected", [
    ("configs/cifar10_ddpmpp.py", (), 55_733_891),
    ("configs/cifar10_ddpmpp.py", ("--config.data.num_classes=10",), 55_735_299),
    ("configs/cifar10_ddpmpp.py", ("--config.model.augment_dim=0",), 55_732_739),
    ("configs/cifar10_ncsnpp.py", (), 56_397_827),
    ("configs/cifar10_ncsnpp.py", ("--config.data.num_classes=10",), 56_400_643),
    ("configs/cifar10_ncsnpp.py", ("--config.model.augment_dim=0",), 56_395_523),
])
def test_parameter_count_equals_reference(config, overrides, expected):
  assert count_params(_abstract(config, overrides)) == expected


def _tiny(arch="ddpmpp", **kw):
  base = dict(arch=arch, model_channels=16, channel_mult=(1, 2), num_blocks=1,
              attn_resolutions=(4,), dropout=0.1, augment_dim=0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _build(cfg, label_dim=0, res=8, channels=3, seed=0):
  return build_network(cfg, img_resolution=res, img_channels=channels, label_dim=label_dim,
                       rngs=nnx.Rngs(seed))


def _shape_only(cfg, label_dim=0):
  """Construction without weights (fast): for structure checks."""
  return nnx.eval_shape(lambda: _build(cfg, label_dim))


def _randomized(params, seed):
  """Zero-ish output layers at init would hide most paths: every param random."""
  rng = np.random.default_rng(seed)  # NumPy: an eager jax draw per shape would compile per shape
  return jax.tree.map(lambda p: jnp.asarray(0.3 * rng.standard_normal(p.shape), jnp.float32),
                      params)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, params, x, c_noise, labels=None, aug=None):
  return nnx.merge(graphdef, params)(x, c_noise, labels, aug)


@functools.partial(jax.jit, static_argnums=0)
def _apply_train(graphdef, params, x, c_noise, labels, key):
  return nnx.merge(graphdef, params)(x, c_noise, labels, train=True, rngs=nnx.Rngs(dropout=key))


@pytest.fixture(scope="module")
def ddpmpp_cond():
  # Dropout settings only matter with train=True, so one network serves every test below.
  cfg = _tiny(augment_dim=9, dropout=0.5, label_dropout=0.5)
  return nnx.split(_build(cfg, label_dim=10), nnx.Param)


def test_module_names_follow_the_reference():
  # Hand-derived from the reference's construction loop: channel_mult (1, 2), 1 block, res 8.
  net = _shape_only(_tiny("ncsnpp"))
  assert net.enc_order == ("8x8_conv", "8x8_block0", "4x4_down", "4x4_aux_residual", "4x4_block0")
  assert net.dec_order == ("4x4_in0", "4x4_in1", "4x4_block0", "4x4_block1", "8x8_up",
                           "8x8_block0", "8x8_block1", "8x8_aux_norm", "8x8_aux_conv")
  skip = _shape_only(_tiny(encoder_type="skip", decoder_type="skip"))
  assert skip.enc_order == ("8x8_conv", "8x8_block0", "4x4_down", "4x4_aux_down", "4x4_aux_skip",
                            "4x4_block0")
  assert skip.dec_order == ("4x4_in0", "4x4_in1", "4x4_block0", "4x4_block1", "4x4_aux_norm",
                            "4x4_aux_conv", "8x8_up", "8x8_block0", "8x8_block1", "8x8_aux_up",
                            "8x8_aux_norm", "8x8_aux_conv")
  # Attention: in0 always; in the decoder only the last block of an attention resolution.
  assert net.dec["4x4_in0"].num_heads == 1 and net.dec["4x4_in1"].num_heads == 0
  assert net.dec["4x4_block0"].num_heads == 0 and net.dec["4x4_block1"].num_heads == 1
  assert net.enc["4x4_block0"].num_heads == 1 and net.enc["8x8_block0"].num_heads == 0


def test_ddpmpp_and_ncsnpp_presets():
  d = _shape_only(_tiny("ddpmpp"))
  n = _shape_only(_tiny("ncsnpp"))
  assert d.embedding_type == "positional" and d.fourier_freqs is None
  assert n.embedding_type == "fourier" and len(n.fourier_freqs) == 16  # 2 * 16 noise channels / 2
  assert d.enc["4x4_down"].conv0.resample_filter == (1.0, 1.0)
  assert n.enc["4x4_down"].conv0.resample_filter == (1.0, 3.0, 3.0, 1.0)
  assert n.map_layer0.in_features == 32 and d.map_layer0.in_features == 16  # channel_mult_noise
  blk = d.enc["8x8_block0"]
  np.testing.assert_allclose(blk.skip_scale, np.sqrt(0.5))
  assert blk.norm0.eps == 1e-6 and not blk.adaptive_scale
  assert d.enc["4x4_down"].skip.weight is not None  # resample_proj: 1x1 projection on the skip


@pytest.mark.parametrize("arch,kw,label_dim", [
    ("ddpmpp", dict(out_channels_factor=2, dtype="bfloat16"), 0),
    ("ncsnpp", dict(augment_dim=9), 10),
    ("ddpmpp", dict(encoder_type="skip", decoder_type="skip"), 10),
])
def test_forward_shapes_cond_and_uncond(arch, kw, label_dim):
  net = _build(_tiny(arch, **kw), label_dim=label_dim)
  graphdef, params = nnx.split(net, nnx.Param)
  x = jnp.ones((2, 8, 8, 3))
  labels = jax.nn.one_hot(jnp.array([1, 7]), 10) if label_dim else None
  aug = jnp.ones((2, 9)) if kw.get("augment_dim") else None
  out = _apply(graphdef, _randomized(params, 0), x, jnp.array([0.1, -0.5]), labels, aug)
  chex.assert_shape(out, (2, 8, 8, 3 * kw.get("out_channels_factor", 1)))
  chex.assert_type(out, jnp.float32)  # also with a bfloat16 compute dtype
  chex.assert_tree_all_finite(out)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))  # params stay float32


def test_conditioning_changes_the_output(ddpmpp_cond):
  graphdef, params = ddpmpp_cond
  params = _randomized(params, 1)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 3))
  c = jnp.array([0.3, 0.3])
  y = jax.nn.one_hot(jnp.array([1, 1]), 10)
  base = _apply(graphdef, params, x, c, y)
  assert not np.allclose(base, _apply(graphdef, params, x, c, jax.nn.one_hot(jnp.array([2, 2]), 10)))
  assert not np.allclose(base, _apply(graphdef, params, x, jnp.array([0.9, 0.9]), y))
  assert not np.allclose(base, _apply(graphdef, params, x, c, y, jnp.ones((2, 9))))
  # No labels on a conditional net = all-zero labels (the reference's EDMPrecond default).
  net = nnx.merge(graphdef, params)
  np.testing.assert_allclose(net.embed(c, None), net.embed(c, jnp.zeros((2, 10))), rtol=1e-6)


def test_train_mode_uses_dropout_and_label_dropout(ddpmpp_cond):
  graphdef, params = ddpmpp_cond
  params = _randomized(params, 3)
  x = jnp.ones((2, 8, 8, 3))
  c = jnp.array([0.3, 0.3])
  y = jax.nn.one_hot(jnp.array([1, 1]), 10)
  a = _apply_train(graphdef, params, x, c, y, jax.random.PRNGKey(0))
  b = _apply_train(graphdef, params, x, c, y, jax.random.PRNGKey(1))
  assert not np.allclose(a, b)
  assert not np.allclose(a, _apply(graphdef, params, x, c, y))
  net = nnx.merge(graphdef, params)
  # label dropout zeroes whole label vectors: with rate 0.5 over 32 draws some rows drop, some stay
  no_label = net.embed(c, jnp.zeros((2, 10)))
  rngs = nnx.Rngs(dropout=0)
  dropped = [np.all(np.isclose(net.embed(c, y, train=True, rngs=rngs), no_label, rtol=1e-6), axis=1)
             for _ in range(16)]
  assert 5 < np.sum(dropped) < 27
  with pytest.raises(ValueError, match="dropout"):
    net(x, c, y, train=True, rngs=None)


def test_only_params_and_pure_forward(ddpmpp_cond):
  graphdef, params = ddpmpp_cond
  net = nnx.merge(graphdef, params)
  g2, p2 = nnx.split(net, nnx.Param)  # no remainder: nothing but nnx.Param
  assert g2 == graphdef
  assert all(isinstance(v, nnx.Param) for _, v in nnx.to_flat_state(nnx.state(net)))


def test_fourier_frequencies_from_config():
  freqs = [float(v) for v in np.linspace(-3, 3, 16)]
  net = _shape_only(_tiny("ncsnpp", fourier_freqs=freqs))
  np.testing.assert_array_equal(np.float32(net.fourier_freqs), np.float32(freqs))
  with pytest.raises(JaxdiffError, match="fourier_freqs"):
    _shape_only(_tiny("ncsnpp", fourier_freqs=freqs[:5]))
  a, b = _shape_only(_tiny("ncsnpp", fourier_seed=1)), _shape_only(_tiny("ncsnpp", fourier_seed=2))
  assert a.fourier_freqs != b.fourier_freqs


def test_init_matches_the_reference_schemes(ddpmpp_cond):
  net = nnx.merge(*ddpmpp_cond)
  blk = net.enc["4x4_block0"]
  assert isinstance(blk, UNetBlock)
  # init_zero of SongUNet is xavier_uniform scaled by 1e-5, not exactly zero.
  w = np.asarray(blk.conv1.weight[...])
  bound = 1e-5 * np.sqrt(6 / (32 * 9 + 32 * 9))
  assert 0 < np.abs(w).max() <= bound
  # attention qkv: xavier_uniform times sqrt(0.2)
  q = np.asarray(blk.qkv.weight[...])
  assert np.abs(q).max() <= np.sqrt(0.2) * np.sqrt(6 / (32 + 96)) + 1e-7
  assert not np.any(np.asarray(net.map_label.bias[...]))  # biases start at zero


def test_init_is_the_same_eagerly_and_under_jit():
  def make():
    rngs = nnx.Rngs(5)
    return nnx.state(nnx.Dict({"c": Conv2d(3, 5, 3, rngs=rngs),
                               "l": Linear(7, 3, init_mode="xavier_normal", rngs=rngs)}), nnx.Param)
  chex.assert_trees_all_close(make(), jax.jit(make)(), rtol=1e-6)


def test_bad_options_are_one_line_errors():
  for kw in (dict(embedding_type="sinus"), dict(encoder_type="x"), dict(decoder_type="residual")):
    with pytest.raises(JaxdiffError):
      _shape_only(_tiny(**kw))


def test_songunet_direct_construction_defaults_match_reference_signature():
  net = nnx.eval_shape(lambda: SongUNet(img_resolution=32, in_channels=3, out_channels=3,
                                        rngs=nnx.Rngs(0)))
  # reference defaults: channel_mult (1,2,2,2), 4 blocks, attention at 16
  assert net.enc_order[0] == "32x32_conv" and "4x4_block3" in net.enc_order
  assert net.enc["16x16_block0"].num_heads == 1


def test_embedding_order_matches_numpy(ddpmpp_cond):
  # SongUNet mapping: positional (endpoint) swapped to [sin, cos] + map_label(y * sqrt(label_dim))
  # + map_augment(a) -> layer0 -> silu -> layer1 -> silu.
  graphdef, params = ddpmpp_cond
  net = nnx.merge(graphdef, _randomized(params, 6))
  rng = np.random.default_rng(7)
  c = np.array([0.7, -2.0])
  y = np.eye(10)[[3, 5]]
  a = rng.standard_normal((2, 9))
  p = lambda m: {k: np.asarray(v[...], np.float64) for k, v in vars(m).items()  # noqa: E731
                 if isinstance(v, nnx.Param)}
  silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
  freqs = (1 / 10000) ** (np.arange(8) / 7)  # 16 noise channels, endpoint: divide by 8 - 1
  e = np.concatenate([np.sin(c[:, None] * freqs), np.cos(c[:, None] * freqs)], 1)
  lab = p(net.map_label)
  e = e + (y * np.sqrt(10)) @ lab["weight"] + lab["bias"] + a @ p(net.map_augment)["weight"]
  l0, l1 = p(net.map_layer0), p(net.map_layer1)
  e = silu(silu(e @ l0["weight"] + l0["bias"]) @ l1["weight"] + l1["bias"])
  got = net.embed(jnp.asarray(c, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(a, jnp.float32))
  np.testing.assert_allclose(got, e, rtol=1e-4, atol=1e-5)
