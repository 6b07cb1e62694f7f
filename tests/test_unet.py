"""The digits U-Net's fused GroupNorm-SiLU against nnx's own GroupNorm followed by SiLU."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.nets import unet


def _norm(channels):
  norm = nnx.GroupNorm(channels, num_groups=unet._groups(channels), epsilon=1e-6,
                       rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)  # non-trivial scale / bias, so both parameters are exercised
  norm.scale[...] = jnp.asarray(1 + 0.3 * rng.standard_normal(channels), jnp.float32)
  norm.bias[...] = jnp.asarray(0.2 * rng.standard_normal(channels), jnp.float32)
  return norm


def test_norm_silu_is_nnx_group_norm_then_silu():
  rng = np.random.default_rng(0)
  x = jnp.asarray(1.5 + 2 * rng.standard_normal((3, 4, 4, 96)), jnp.float32)
  a = jnp.asarray(1 + 0.1 * rng.standard_normal((3, 1, 1, 96)), jnp.float32)
  shift = jnp.asarray(0.1 * rng.standard_normal((3, 1, 1, 96)), jnp.float32)
  norm = _norm(96)

  def fused(x, a, shift):
    return unet.norm_silu(norm, x, a, shift)

  def composed(x, a, shift):
    return nnx.silu(norm(x) * a + shift)

  out = fused(x, a, shift)
  chex.assert_shape(out, x.shape)
  chex.assert_type(out, jnp.float32)
  # nnx computes the variance as E[x^2] - E[x]^2, the fused op in two passes: float32 round-off.
  np.testing.assert_allclose(out, composed(x, a, shift), rtol=0, atol=2e-5)
  np.testing.assert_allclose(unet.norm_silu(norm, x), nnx.silu(norm(x)), rtol=0, atol=2e-5)
  probe = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  loss = lambda f: lambda *args: jnp.sum(f(*args) * probe)  # noqa: E731
  g_fused = jax.grad(loss(fused), argnums=(0, 1, 2))(x, a, shift)
  g_comp = jax.grad(loss(composed), argnums=(0, 1, 2))(x, a, shift)
  for gf, gc in zip(g_fused, g_comp):
    chex.assert_equal_shape([gf, gc])
    np.testing.assert_allclose(gf, gc, rtol=1e-4, atol=1e-4)


def test_unet_dropout_masks_are_inverted_dropout():
  block = unet.ResBlock(8, 8, 16, dropout=0.5, dtype=jnp.float32, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.float32)
  emb = jnp.asarray(rng.standard_normal((2, 16)), jnp.float32)
  # conv1 starts at zero: set it to the identity so the dropped / scaled values show in the output
  block.conv1.kernel[...] = jnp.zeros((3, 3, 8, 8)).at[1, 1].set(jnp.eye(8))
  block.conv1.bias[...] = jnp.zeros(8)
  h = block.conv0(unet.norm_silu(block.norm0, x))
  s, t = jnp.split(block.affine(emb)[:, None, None, :], 2, axis=-1)
  h = unet.norm_silu(block.norm1, h, 1 + s, t)
  out = block(x, emb, train=True, rngs=nnx.Rngs(dropout=3)) - x
  assert np.abs(np.asarray(h)).min() > 1e-4  # no element is both kept and dropped
  kept = np.isclose(np.asarray(out), np.asarray(2 * h), atol=1e-5)
  dropped = np.isclose(np.asarray(out), 0, atol=1e-6)
  assert np.all(kept | dropped)
  assert 0.3 < kept.mean() < 0.7
  np.testing.assert_allclose(block(x, emb, train=False, rngs=None) - x, h, atol=1e-5)
