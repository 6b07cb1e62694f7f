"""DhariwalUNet (ADM): the reference's parameter count, structure, forward contract."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxdiff.config import load_config
from jaxdiff.nets import build_network
from jaxdiff.nets.layers import count_params


def test_parameter_count_equals_reference():
  # shared/REFERENCE.md: ADM ImageNet-64, cond (1000 classes), no augment.
  cfg = load_config("configs/imagenet64_adm.py")
  net = nnx.eval_shape(lambda: build_network(
      cfg.model, img_resolution=cfg.data.resolution, img_channels=cfg.data.channels,
      label_dim=cfg.data.num_classes, rngs=nnx.Rngs(0)))
  assert count_params(net) == 295_899_267


def _tiny(**kw):
  base = dict(arch="adm", model_channels=16, channel_mult=(1, 2), num_blocks=1,
              attn_resolutions=(4,), channels_per_head=8, dropout=0.1, augment_dim=0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _build(cfg, label_dim=0, seed=0):
  return build_network(cfg, img_resolution=8, img_channels=3, label_dim=label_dim,
                       rngs=nnx.Rngs(seed))


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, params, x, c_noise, labels=None, aug=None):
  return nnx.merge(graphdef, params)(x, c_noise, labels, aug)


def test_structure_follows_the_reference():
  net = nnx.eval_shape(lambda: _build(_tiny(), label_dim=10))
  # Hand-derived: level 0 conv has model_channels * mult[0] outputs; every encoder output is a skip.
  assert net.enc_order == ("8x8_conv", "8x8_block0", "4x4_down", "4x4_block0")
  assert net.dec_order == ("4x4_in0", "4x4_in1", "4x4_block0", "4x4_block1", "8x8_up",
                           "8x8_block0", "8x8_block1")
  # attention at every block of an attention resolution, heads = channels // channels_per_head
  assert [net.dec[n].num_heads for n in net.dec_order] == [4, 0, 4, 4, 0, 0, 0]
  assert net.enc["4x4_block0"].num_heads == 4
  blk = net.enc["8x8_block0"]
  assert blk.adaptive_scale and blk.skip_scale == 1.0 and blk.norm0.eps == 1e-5
  assert net.enc["4x4_down"].skip.weight is None  # no resample_proj: the skip only resamples
  assert net.map_label.bias is None and net.map_label.out_features == 64  # label -> emb, no bias
  assert net.out_norm.eps == 1e-5


def test_init_matches_the_reference_schemes():
  net = _build(_tiny(augment_dim=9), label_dim=10)
  # init_zero is exactly zero for ADM: the output layer, conv1 and the attention projection
  assert not np.any(np.asarray(net.out_conv.weight[...]))
  assert not np.any(np.asarray(net.enc["8x8_block0"].conv1.weight[...]))
  assert not np.any(np.asarray(net.map_augment.weight[...]))
  # kaiming_uniform * sqrt(1/3): |w| <= sqrt(3 / fan_in) / sqrt(3) = 1/sqrt(fan_in), biases too
  w = np.asarray(net.enc["8x8_conv"].weight[...])
  b = np.asarray(net.enc["8x8_conv"].bias[...])
  assert np.abs(w).max() <= 1 / np.sqrt(27) + 1e-7 and np.abs(w).max() > 0.8 / np.sqrt(27)
  assert 0 < np.abs(b).max() <= 1 / np.sqrt(27) + 1e-7
  # map_label: kaiming_normal * sqrt(label_dim) -> std 1
  np.testing.assert_allclose(np.asarray(net.map_label.weight[...]).std(), 1.0, rtol=0.25)
  # so the network output is exactly zero at init
  out = _apply(*nnx.split(net, nnx.Param), jnp.ones((1, 8, 8, 3)), jnp.array([0.1]),
               jax.nn.one_hot(jnp.array([2]), 10))
  assert not np.any(np.asarray(out))


@pytest.mark.parametrize("label_dim,kw", [(0, dict(out_channels_factor=2)), (10, dict(augment_dim=9))])
def test_forward_shapes_cond_and_uncond(label_dim, kw):
  graphdef, params = nnx.split(_build(_tiny(**kw), label_dim=label_dim), nnx.Param)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: jnp.asarray(0.3 * rng.standard_normal(p.shape), jnp.float32),
                        params)
  x = jnp.ones((2, 8, 8, 3))
  labels = jax.nn.one_hot(jnp.array([1, 7]), 10) if label_dim else None
  aug = jnp.ones((2, 9)) if kw.get("augment_dim") else None
  out = _apply(graphdef, params, x, jnp.array([0.1, 3.0]), labels, aug)
  chex.assert_shape(out, (2, 8, 8, 3 * kw.get("out_channels_factor", 1)))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)
  if label_dim:
    other = _apply(graphdef, params, x, jnp.array([0.1, 3.0]), jnp.roll(labels, 1, axis=0), aug)
    assert not np.allclose(out, other)


def test_embedding_order_matches_numpy():
  # ADM mapping: positional [cos, sin] (no endpoint) + augment -> layer0 -> silu -> layer1,
  # then + labels (no bias, no scaling) -> silu.
  net = _build(_tiny(augment_dim=9), label_dim=10)
  rng = np.random.default_rng(1)
  state = nnx.state(net, nnx.Param)
  nnx.update(net, jax.tree.map(lambda p: jnp.asarray(0.3 * rng.standard_normal(p.shape),
                                                     jnp.float32), state))
  c = np.array([0.7, -2.0])
  y = np.eye(10)[[3, 5]]
  a = rng.standard_normal((2, 9))
  p = lambda m: {k: np.asarray(v[...], np.float64) for k, v in vars(m).items()  # noqa: E731
                 if isinstance(v, nnx.Param)}
  silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
  freqs = (1 / 10000) ** (np.arange(8) / 8)
  e = np.concatenate([np.cos(c[:, None] * freqs), np.sin(c[:, None] * freqs)], 1)
  e = e + a @ p(net.map_augment)["weight"]
  l0, l1 = p(net.map_layer0), p(net.map_layer1)
  e = silu(e @ l0["weight"] + l0["bias"]) @ l1["weight"] + l1["bias"]
  e = silu(e + y @ p(net.map_label)["weight"])
  got = net.embed(jnp.asarray(c, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(a, jnp.float32))
  np.testing.assert_allclose(got, e, rtol=1e-4, atol=1e-5)
