"""A small U-Net for the embedded default and quick experiments (not a reference architecture).

Residual blocks with GroupNorm and an additive noise/label embedding, self-attention at chosen
resolutions, skip connections by concatenation. The reference networks live in songunet.py and
dhariwal.py; this one exists so that digits train in minutes on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.nets import layers
from jaxdiff.nets.layers import remat_forward


def _groups(channels: int) -> int:
  """The most groups (at most 32, at least 4 channels each) that divide `channels`."""
  g = max(1, min(32, channels // 4))
  while channels % g:
    g -= 1
  return g


def make_group_norm(channels: int, dtype, rngs) -> nnx.GroupNorm:
  """The U-Net's GroupNorm: `_groups` groups, eps 1e-6, host-initialised scale and bias."""
  return layers.group_norm_module(channels, num_groups=_groups(channels), epsilon=1e-6, dtype=dtype,
                                  rngs=rngs)


def positional_embedding(c_noise: jax.Array, dim: int, max_positions: int = 10000) -> jax.Array:
  """[B] -> [B, dim]: cos/sin of c_noise at geometric frequencies (float32: it feeds every layer)."""
  freqs = (1.0 / max_positions) ** (np.arange(dim // 2, dtype=np.float32) / (dim // 2))
  angles = c_noise.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=1)


def norm_silu(norm: nnx.GroupNorm, x, a=None, shift=None):
  """silu(shift + norm(x) * a) (or silu(norm(x))) in float32 through layers.group_norm_silu, as
  layers.GroupNorm.silu does: one custom_vjp that keeps x and the group statistics for the
  backward rather than autodiff's intermediates. `norm` holds the parameters (scale, bias) under
  their nnx.GroupNorm names, so checkpoints keep their layout."""
  f32 = lambda v: None if v is None else v.astype(jnp.float32)  # noqa: E731
  y = layers.group_norm_silu(f32(x), norm.scale[...], norm.bias[...], f32(a), f32(shift),
                             norm.num_groups, norm.epsilon)
  return y.astype(x.dtype)


class ResBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, dtype, *, remat=False,
               rngs: nnx.Rngs):
    self.remat = bool(remat)
    self.norm0 = make_group_norm(cin, dtype, rngs)
    self.conv0 = layers.conv(cin, cout, (3, 3), dtype=dtype, rngs=rngs)
    # Embedding gives a per-channel scale and shift (adaptive GroupNorm).
    self.affine = layers.linear(emb_dim, 2 * cout, dtype=dtype, rngs=rngs)
    self.norm1 = make_group_norm(cout, dtype, rngs)
    self.dropout = float(dropout)
    # Zero init: every block starts as the identity, which keeps deep stacks trainable.
    self.conv1 = layers.conv(cout, cout, (3, 3), dtype=dtype, kernel_init=layers.zeros_init,
                             rngs=rngs)
    self.skip = layers.conv(cin, cout, (1, 1), dtype=dtype, rngs=rngs) if cin != cout else None

  def __call__(self, x, emb, *, train: bool, rngs):
    if self.remat:
      return remat_forward(self, x, emb, train=train, rngs=rngs)
    return self.forward(x, emb, train=train, rngs=rngs)

  def forward(self, x, emb, *, train: bool, rngs):
    h = self.conv0(norm_silu(self.norm0, x))
    scale, shift = jnp.split(self.affine(emb)[:, None, None, :], 2, axis=-1)
    h = norm_silu(self.norm1, h, 1 + scale, shift)
    h = self.conv1(layers.dropout(h, self.dropout, train=train, rngs=rngs))
    return (self.skip(x) if self.skip is not None else x) + h


class Attention(nnx.Module):
  def __init__(self, channels: int, dtype, *, rngs: nnx.Rngs):
    self.norm = make_group_norm(channels, dtype, rngs)
    self.qkv = layers.linear(channels, 3 * channels, dtype=dtype, rngs=rngs)
    self.proj = layers.linear(channels, channels, dtype=dtype, kernel_init=layers.zeros_init,
                              rngs=rngs)

  def __call__(self, x):
    b, h, w, c = x.shape
    q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(b, h * w, 3 * c), 3, axis=-1)
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / np.sqrt(c)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # softmax in float32
    out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, h, w, c)
    return x + self.proj(out)


class UNet(nnx.Module):
  def __init__(self, *, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
               augment_dim: int = 0, model_channels: int = 64, channel_mult=(1, 2),
               num_blocks: int = 2, attn_resolutions=(4,), dropout: float = 0.1,
               label_dropout: float = 0.0, dtype=jnp.float32, remat: bool = False,
               rngs: nnx.Rngs):
    self.model_channels = model_channels
    self.label_dropout = label_dropout
    self.dtype = dtype
    emb_dim = 4 * model_channels
    self.map0 = layers.linear(model_channels, emb_dim, rngs=rngs)
    self.map1 = layers.linear(emb_dim, emb_dim, rngs=rngs)
    self.map_label = (layers.linear(label_dim, model_channels, use_bias=False, rngs=rngs)
                      if label_dim else None)
    self.map_augment = (layers.linear(augment_dim, model_channels, use_bias=False, rngs=rngs)
                        if augment_dim else None)
    self.conv_in = layers.conv(in_channels, model_channels, (3, 3), dtype=dtype, rngs=rngs)

    down, skips, c, res = [], [model_channels], model_channels, img_resolution
    for level, mult in enumerate(channel_mult):
      for _ in range(num_blocks):
        down.append(ResBlock(c, model_channels * mult, emb_dim, dropout, dtype, remat=remat,
                             rngs=rngs))
        c = model_channels * mult
        down.append(Attention(c, dtype, rngs=rngs) if res in attn_resolutions else None)
        skips.append(c)
      if level != len(channel_mult) - 1:
        down.append(layers.conv(c, c, (3, 3), strides=(2, 2), dtype=dtype, rngs=rngs))
        skips.append(c)
        res //= 2
    self.down = nnx.List(down)
    self.mid = nnx.List([ResBlock(c, c, emb_dim, dropout, dtype, remat=remat, rngs=rngs),
                         Attention(c, dtype, rngs=rngs),
                         ResBlock(c, c, emb_dim, dropout, dtype, remat=remat, rngs=rngs)])
    up = []
    for level, mult in reversed(list(enumerate(channel_mult))):
      for _ in range(num_blocks + 1):
        cskip = skips.pop()
        up.append(ResBlock(c + cskip, model_channels * mult, emb_dim, dropout, dtype, remat=remat,
                           rngs=rngs))
        c = model_channels * mult
        up.append(Attention(c, dtype, rngs=rngs) if res in attn_resolutions else None)
      if level != 0:
        up.append(layers.conv(c, c, (3, 3), dtype=dtype, rngs=rngs))  # after nearest upsampling
        res *= 2
    self.up = nnx.List(up)
    self.norm_out = make_group_norm(c, dtype, rngs)
    self.conv_out = layers.conv(c, out_channels, (3, 3), dtype=dtype,
                                kernel_init=layers.zeros_init, rngs=rngs)

  def __call__(self, x, c_noise, class_labels=None, augment_labels=None, *, train=False, rngs=None):
    emb = positional_embedding(c_noise, self.model_channels)
    if self.map_label is not None:
      labels = class_labels.astype(jnp.float32)
      if train and self.label_dropout:
        keep = jax.random.bernoulli(rngs.dropout(), 1 - self.label_dropout, (labels.shape[0], 1))
        labels = labels * keep
      emb = emb + self.map_label(labels)
    if self.map_augment is not None and augment_labels is not None:
      emb = emb + self.map_augment(augment_labels.astype(jnp.float32))
    emb = nnx.silu(self.map1(nnx.silu(self.map0(emb)))).astype(self.dtype)

    h = self.conv_in(x.astype(self.dtype))
    hs = [h]
    for layer in self.down:
      if isinstance(layer, ResBlock):
        h = layer(h, emb, train=train, rngs=rngs)
      elif isinstance(layer, Attention):
        h = layer(h)
        hs.pop()  # the block's output is replaced by the attended one
      elif layer is None:
        continue
      else:
        h = layer(h)
      hs.append(h)
    h = self.mid[0](h, emb, train=train, rngs=rngs)
    h = self.mid[1](h)
    h = self.mid[2](h, emb, train=train, rngs=rngs)
    for layer in self.up:
      if isinstance(layer, ResBlock):
        h = layer(jnp.concatenate([h, hs.pop()], axis=-1), emb, train=train, rngs=rngs)
      elif isinstance(layer, Attention):
        h = layer(h)
      elif layer is None:
        continue
      else:
        b, hh, ww, cc = h.shape
        h = layer(jax.image.resize(h, (b, 2 * hh, 2 * ww, cc), "nearest"))
    return self.conv_out(norm_silu(self.norm_out, h)).astype(jnp.float32)


def build(options, *, img_resolution, img_channels, label_dim, rngs):
  g = options.get
  return UNet(img_resolution=img_resolution, in_channels=img_channels,
              out_channels=img_channels * g("out_channels_factor", 1), label_dim=label_dim,
              augment_dim=g("augment_dim", 0), model_channels=options["model_channels"],
              channel_mult=tuple(options["channel_mult"]), num_blocks=options["num_blocks"],
              attn_resolutions=tuple(options["attn_resolutions"]), dropout=options["dropout"],
              label_dropout=g("label_dropout", 0.0), dtype=jnp.dtype(g("dtype", "float32")),
              remat=bool(g("remat", False)), rngs=rngs)
