"""SongUNet: the DDPM++ and NCSN++ networks of the EDM reference (NVlabs/edm), in NHWC.

Module names and their order follow the reference (`enc['32x32_conv']`, `dec['16x16_block3']`, ...),
so a reference state dict maps onto these parameters by name; see jaxdiff/convert/edm.py.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.errors import JaxdiffError
from jaxdiff.nets.layers import (Conv2d, GroupNorm, Linear, UNetBlock, fourier_embedding,
                                 fourier_frequencies, label_dropout, positional_embedding)


def init_mapping(m, *, noise_channels, emb_channels, label_dim, augment_dim, init, rngs):
  """The DDPM++ / NCSN++ mapping layers, made on module `m` under the reference's names
  (map_label, map_augment, map_layer0, map_layer1): SongUNet's own, and the multi-stage network's
  shared `embedding`."""
  m.map_label = (Linear(label_dim, noise_channels, rngs=rngs, **init) if label_dim else None)
  m.map_augment = (Linear(augment_dim, noise_channels, bias=False, rngs=rngs, **init)
                   if augment_dim else None)
  m.map_layer0 = Linear(noise_channels, emb_channels, rngs=rngs, **init)
  m.map_layer1 = Linear(emb_channels, emb_channels, rngs=rngs, **init)


def map_embedding(m, emb, class_labels=None, augment_labels=None, *, train=False, rngs=None):
  """The embedding vector [B, emb_channels] from a noise embedding `emb` [B, C] (cos first) through
  the mapping layers of `init_mapping` on `m` (which also holds label_dim and label_dropout)."""
  half = emb.shape[1] // 2
  emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=1)  # sin first, as the reference
  if m.map_label is not None:
    labels = (jnp.zeros((emb.shape[0], m.label_dim), jnp.float32) if class_labels is None
              else class_labels.astype(jnp.float32))
    labels = label_dropout(labels, m.label_dropout, train=train, rngs=rngs)
    emb = emb + m.map_label(labels * np.float32(np.sqrt(m.label_dim)))
  if m.map_augment is not None and augment_labels is not None:
    emb = emb + m.map_augment(augment_labels.astype(jnp.float32))
  emb = nnx.silu(m.map_layer0(emb))
  return nnx.silu(m.map_layer1(emb))


class SongUNet(nnx.Module):
  """DDPM++ (positional embedding, standard encoder) / NCSN++ (Fourier, residual encoder)."""

  def __init__(self, *, img_resolution: int, in_channels: int, out_channels: int,
               label_dim: int = 0, augment_dim: int = 0, model_channels: int = 128,
               channel_mult: Sequence[int] = (1, 2, 2, 2), channel_mult_emb: int = 4,
               num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.10,
               label_dropout: float = 0.0, embedding_type: str = "positional",
               channel_mult_noise: int = 1, encoder_type: str = "standard",
               decoder_type: str = "standard", resample_filter: Sequence[float] = (1, 1),
               fourier_scale: float = 16.0, fourier_freqs: Sequence[float] | None = None,
               fourier_seed: int = 0, num_groups: int = 32, dtype=jnp.float32,
               remat: bool = False, rngs: nnx.Rngs):
    if embedding_type not in ("fourier", "positional"):
      raise JaxdiffError(f"model.embedding_type {embedding_type!r}: use 'positional' or 'fourier'")
    if encoder_type not in ("standard", "skip", "residual"):
      raise JaxdiffError(f"model.encoder_type {encoder_type!r}: use 'standard', 'skip' or 'residual'")
    if decoder_type not in ("standard", "skip"):
      raise JaxdiffError(f"model.decoder_type {decoder_type!r}: use 'standard' or 'skip'")

    self.label_dim = label_dim
    self.label_dropout = float(label_dropout)
    self.embedding_type = embedding_type
    self.dtype = jnp.dtype(dtype)
    emb_channels = model_channels * channel_mult_emb
    noise_channels = model_channels * channel_mult_noise
    self.noise_channels = noise_channels
    if embedding_type == "fourier":
      freqs = (fourier_frequencies(noise_channels, fourier_scale, fourier_seed)
               if fourier_freqs is None else tuple(float(v) for v in fourier_freqs))
      if len(freqs) != noise_channels // 2:
        raise JaxdiffError(f"model.fourier_freqs has {len(freqs)} values, the network needs "
                           f"{noise_channels // 2}; remove it to draw them from fourier_seed")
      self.fourier_freqs = freqs
    else:
      self.fourier_freqs = None

    init = dict(init_mode="xavier_uniform")
    init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
    init_attn = dict(init_mode="xavier_uniform", init_weight=np.sqrt(0.2))
    block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout,
                        skip_scale=np.sqrt(0.5), eps=1e-6, num_groups=num_groups,
                        resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                        init=init, init_zero=init_zero, init_attn=init_attn, remat=remat,
                        rngs=rngs)

    init_mapping(self, noise_channels=noise_channels, emb_channels=emb_channels,
                 label_dim=label_dim, augment_dim=augment_dim, init=init, rngs=rngs)

    # Encoder.
    enc = {}
    cout = in_channels
    caux = in_channels
    for level, mult in enumerate(channel_mult):
      res = img_resolution >> level
      if level == 0:
        cin = cout
        cout = model_channels
        enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, rngs=rngs, **init)
      else:
        enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
        if encoder_type == "skip":
          enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True,
                                                resample_filter=resample_filter, rngs=rngs)
          enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, rngs=rngs, **init)
        if encoder_type == "residual":
          enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True,
                                                    resample_filter=resample_filter,
                                                    fused_resample=True, rngs=rngs, **init)
          caux = cout
      for idx in range(num_blocks):
        cin = cout
        cout = model_channels * mult
        enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                   **block_kwargs)
    skips = [m.out_channels for name, m in enc.items() if "aux" not in name]

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
        attn = idx == num_blocks and res in attn_resolutions
        dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
      if decoder_type == "skip" or level == 0:
        if decoder_type == "skip" and level < len(channel_mult) - 1:
          dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                              resample_filter=resample_filter, rngs=rngs)
        dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6, num_groups=num_groups)
        dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, rngs=rngs, **init_zero)

    # Forward order = construction order; kept explicitly so it never depends on dict ordering.
    self.enc_order = tuple(enc)
    self.dec_order = tuple(dec)
    self.enc = nnx.Dict(enc)
    self.dec = nnx.Dict(dec)

  def embed(self, c_noise, class_labels=None, augment_labels=None, *, train=False, rngs=None):
    """The float32 embedding vector [B, emb_channels] fed to every block."""
    if self.embedding_type == "positional":
      emb = positional_embedding(c_noise, self.noise_channels, endpoint=True)
    else:
      emb = fourier_embedding(c_noise, self.fourier_freqs)
    return map_embedding(self, emb, class_labels, augment_labels, train=train, rngs=rngs)

  def __call__(self, x, c_noise, class_labels=None, augment_labels=None, *, train=False,
               rngs=None):
    emb = self.embed(c_noise, class_labels, augment_labels, train=train, rngs=rngs)
    x = x.astype(self.dtype)

    skips = []
    aux = x
    for name in self.enc_order:
      block = self.enc[name]
      if "aux_down" in name:
        aux = block(aux)
      elif "aux_skip" in name:
        x = skips[-1] = x + block(aux)
      elif "aux_residual" in name:
        x = skips[-1] = aux = (x + block(aux)) / jnp.asarray(np.sqrt(2), x.dtype)
      elif isinstance(block, UNetBlock):
        x = block(x, emb, train=train, rngs=rngs)
        skips.append(x)
      else:
        x = block(x)
        skips.append(x)

    aux = None
    tmp = None
    for name in self.dec_order:
      block = self.dec[name]
      if "aux_up" in name:
        aux = block(aux)
      elif "aux_norm" in name:
        tmp = block(x)
      elif "aux_conv" in name:
        tmp = block(nnx.silu(tmp))
        aux = tmp if aux is None else tmp + aux
      else:
        if x.shape[-1] != block.in_channels:
          x = jnp.concatenate([x, skips.pop()], axis=-1)
        x = block(x, emb, train=train, rngs=rngs)
    return aux.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Builders (registry entries in jaxdiff/nets/__init__.py).

_DDPMPP = dict(embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
               decoder_type="standard", resample_filter=(1, 1))
_NCSNPP = dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
               decoder_type="standard", resample_filter=(1, 3, 3, 1))


def _build(defaults, options, *, img_resolution, img_channels, label_dim, rngs):
  g = options.get

  def opt(key):
    v = g(key, None)
    return defaults[key] if v is None else v

  freqs = g("fourier_freqs", None)
  return SongUNet(
      img_resolution=img_resolution, in_channels=img_channels,
      out_channels=img_channels * int(g("out_channels_factor", 1)), label_dim=label_dim,
      augment_dim=int(g("augment_dim", 0)), model_channels=int(g("model_channels", 128)),
      channel_mult=tuple(g("channel_mult", (2, 2, 2))), channel_mult_emb=int(g("channel_mult_emb", 4)),
      num_blocks=int(g("num_blocks", 4)), attn_resolutions=tuple(g("attn_resolutions", (16,))),
      dropout=float(g("dropout", 0.13)), label_dropout=float(g("label_dropout", 0.0)),
      embedding_type=opt("embedding_type"), channel_mult_noise=int(opt("channel_mult_noise")),
      encoder_type=opt("encoder_type"), decoder_type=opt("decoder_type"),
      resample_filter=tuple(opt("resample_filter")), fourier_scale=float(g("fourier_scale", 16.0)),
      fourier_freqs=None if freqs is None else tuple(freqs), fourier_seed=int(g("fourier_seed", 0)),
      num_groups=int(g("num_groups", 32)), dtype=jnp.dtype(g("dtype", "float32")),
      remat=bool(g("remat", False)), rngs=rngs)


def build_ddpmpp(options, *, img_resolution, img_channels, label_dim, rngs):
  """DDPM++ from the network options (NetworkSpec.as_dict(), a plain dict); keys left out take the reference's DDPM++ values."""
  return _build(_DDPMPP, options, img_resolution=img_resolution, img_channels=img_channels,
                label_dim=label_dim, rngs=rngs)


def build_ncsnpp(options, *, img_resolution, img_channels, label_dim, rngs):
  """NCSN++ from the network options (NetworkSpec.as_dict(), a plain dict); keys left out take the reference's NCSN++ values."""
  return _build(_NCSNPP, options, img_resolution=img_resolution, img_channels=img_channels,
                label_dim=label_dim, rngs=rngs)
