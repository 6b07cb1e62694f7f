"""DhariwalUNet: the ADM network as the EDM reference (NVlabs/edm) builds it, in NHWC.

Module names and their order follow the reference, so its state dicts map onto these parameters
by name (jaxdiff/convert/edm.py).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.nets.layers import (Conv2d, GroupNorm, Linear, UNetBlock, label_dropout,
                                 positional_embedding)


class DhariwalUNet(nnx.Module):
  """ADM: positional embedding, adaptive scale/shift, multi-head attention (64 channels/head)."""

  def __init__(self, *, img_resolution: int, in_channels: int, out_channels: int,
               label_dim: int = 0, augment_dim: int = 0, model_channels: int = 192,
               channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_emb: int = 4,
               num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
               dropout: float = 0.10, label_dropout: float = 0.0, channels_per_head: int = 64,
               dtype=jnp.float32, remat: bool = False, rngs: nnx.Rngs):
    self.label_dim = label_dim
    self.label_dropout = float(label_dropout)
    self.model_channels = model_channels
    self.dtype = jnp.dtype(dtype)
    emb_channels = model_channels * channel_mult_emb
    init = dict(init_mode="kaiming_uniform", init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
    init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
    block_kwargs = dict(emb_channels=emb_channels, channels_per_head=channels_per_head,
                        dropout=dropout, init=init, init_zero=init_zero, remat=remat, rngs=rngs)

    # Mapping.
    self.map_augment = (Linear(augment_dim, model_channels, bias=False, rngs=rngs, **init_zero)
                        if augment_dim else None)
    self.map_layer0 = Linear(model_channels, emb_channels, rngs=rngs, **init)
    self.map_layer1 = Linear(emb_channels, emb_channels, rngs=rngs, **init)
    self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                             init_weight=np.sqrt(label_dim), rngs=rngs) if label_dim else None)

    # Encoder.
    enc = {}
    cout = in_channels
    for level, mult in enumerate(channel_mult):
      res = img_resolution >> level
      if level == 0:
        cin = cout
        cout = model_channels * mult
        enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, rngs=rngs, **init)
      else:
        enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
      for idx in range(num_blocks):
        cin = cout
        cout = model_channels * mult
        enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                   **block_kwargs)
    skips = [m.out_channels for m in enc.values()]

    # Decoder.
    dec = {}
    for level, mult in reversed(list(enumerate(channel_mult))):
      res = img_resolution >> level
      if level == len(channel_mult) - 1:
        dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
        dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
      else:
        dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
      for idx in range(num_blocks + 1):
        cin = cout + skips.pop()
        cout = model_channels * mult
        dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                   **block_kwargs)
    self.enc_order = tuple(enc)
    self.dec_order = tuple(dec)
    self.enc = nnx.Dict(enc)
    self.dec = nnx.Dict(dec)
    self.out_norm = GroupNorm(cout)
    self.out_conv = Conv2d(cout, out_channels, 3, rngs=rngs, **init_zero)

  def embed(self, c_noise, class_labels=None, augment_labels=None, *, train=False, rngs=None):
    """The float32 embedding vector [B, emb_channels] fed to every block."""
    emb = positional_embedding(c_noise, self.model_channels)  # cos first, no endpoint
    if self.map_augment is not None and augment_labels is not None:
      emb = emb + self.map_augment(augment_labels.astype(jnp.float32))
    emb = nnx.silu(self.map_layer0(emb))
    emb = self.map_layer1(emb)
    if self.map_label is not None:
      labels = (jnp.zeros((emb.shape[0], self.label_dim), jnp.float32) if class_labels is None
                else class_labels.astype(jnp.float32))
      labels = label_dropout(labels, self.label_dropout, train=train, rngs=rngs)
      emb = emb + self.map_label(labels)
    return nnx.silu(emb)

  def __call__(self, x, c_noise, class_labels=None, augment_labels=None, *, train=False,
               rngs=None):
    emb = self.embed(c_noise, class_labels, augment_labels, train=train, rngs=rngs)
    x = x.astype(self.dtype)
    skips = []
    for name in self.enc_order:
      block = self.enc[name]
      x = block(x, emb, train=train, rngs=rngs) if isinstance(block, UNetBlock) else block(x)
      skips.append(x)
    for name in self.dec_order:
      block = self.dec[name]
      if x.shape[-1] != block.in_channels:
        x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = block(x, emb, train=train, rngs=rngs)
    x = self.out_conv(self.out_norm.silu(x))
    return x.astype(jnp.float32)


def build_adm(options, *, img_resolution, img_channels, label_dim, rngs):
  """ADM from the network options (NetworkSpec.as_dict(), a plain dict); keys left out take the reference's values."""
  g = options.get
  return DhariwalUNet(
      img_resolution=img_resolution, in_channels=img_channels,
      out_channels=img_channels * int(g("out_channels_factor", 1)), label_dim=label_dim,
      augment_dim=int(g("augment_dim", 0)), model_channels=int(g("model_channels", 192)),
      channel_mult=tuple(g("channel_mult", (1, 2, 3, 4))),
      channel_mult_emb=int(g("channel_mult_emb", 4)), num_blocks=int(g("num_blocks", 3)),
      attn_resolutions=tuple(g("attn_resolutions", (32, 16, 8))), dropout=float(g("dropout", 0.10)),
      label_dropout=float(g("label_dropout", 0.0)),
      channels_per_head=int(g("channels_per_head", 64)), dtype=jnp.dtype(g("dtype", "float32")),
      remat=bool(g("remat", False)), rngs=rngs)
