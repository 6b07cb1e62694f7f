"""The multi-stage U-Net (Zhang et al., CVPR 2024) on the DDPM++ network, in NHWC.

One noise/label embedding and one encoder are shared by all noise stages; stage k has its own
decoder of width `decoder_channels[k]` (wide where denoising is hard, at low σ). A call runs the
shared parts, then exactly one decoder, chosen by `lax.switch` over the decoders' parameter trees.

The stage of a call is the stage of its noise level. Stages are intervals of σ,
[0, b_0), [b_0, b_1), ..., [b_{K-2}, ∞); the network sees c_noise rather than σ, so the
boundaries are mapped to c_noise once at construction through the preconditioning's (increasing)
c_noise(σ). All examples of a call share a stage (sampling calls share σ; the multi-stage train
step draws one stage per batch); the first example's c_noise decides, or pass `stage` explicitly.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.errors import JaxdiffError
from jaxdiff.multistage.stages import stage_of
from jaxdiff.nets.layers import Conv2d, GroupNorm, UNetBlock, positional_embedding
from jaxdiff.nets.songunet import init_mapping, map_embedding

_INIT = dict(init_mode="xavier_uniform")
_INIT_ZERO = dict(init_mode="xavier_uniform", init_weight=1e-5)
_INIT_ATTN = dict(init_mode="xavier_uniform", init_weight=np.sqrt(0.2))


def _block_kwargs(emb_channels, dropout, num_groups, remat, rngs):
  # DDPM++ block settings of the reference (standard encoder/decoder, (1, 1) resampling filter).
  return dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5),
              eps=1e-6, num_groups=num_groups, resample_filter=(1, 1), resample_proj=True,
              adaptive_scale=False, init=_INIT, init_zero=_INIT_ZERO, init_attn=_INIT_ATTN,
              remat=remat, rngs=rngs)


class Embedding(nnx.Module):
  """The DDPM++ noise (positional) + label (+ augment) embedding, shared by all stages."""

  def __init__(self, *, model_channels, channel_mult_emb, label_dim, augment_dim, label_dropout,
               rngs):
    self.label_dim = label_dim
    self.label_dropout = float(label_dropout)
    self.noise_channels = model_channels
    init_mapping(self, noise_channels=model_channels,
                 emb_channels=model_channels * channel_mult_emb, label_dim=label_dim,
                 augment_dim=augment_dim, init=_INIT, rngs=rngs)

  def __call__(self, c_noise, class_labels=None, augment_labels=None, *, train=False, rngs=None):
    emb = positional_embedding(c_noise, self.noise_channels, endpoint=True)
    return map_embedding(self, emb, class_labels, augment_labels, train=train, rngs=rngs)


class Encoder(nnx.Module):
  """The DDPM++ encoder (standard type): returns the bottom feature map and the skip list."""

  def __init__(self, *, img_resolution, in_channels, model_channels, channel_mult, num_blocks,
               attn_resolutions, block_kwargs, rngs):
    enc = {}
    cout = in_channels
    for level, mult in enumerate(channel_mult):
      res = img_resolution >> level
      if level == 0:
        enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, 3, rngs=rngs, **_INIT)
        cout = model_channels
      else:
        enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
      for idx in range(num_blocks):
        cin, cout = cout, model_channels * mult
        enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                   **block_kwargs)
    self.order = tuple(enc)
    self.skip_channels = tuple(m.out_channels for m in enc.values())
    self.out_channels = cout
    self.blocks = nnx.Dict(enc)

  def __call__(self, x, emb, *, train=False, rngs=None):
    skips = []
    for name in self.order:
      block = self.blocks[name]
      x = block(x, emb, train=train, rngs=rngs) if isinstance(block, UNetBlock) else block(x)
      skips.append(x)
    return x, skips


class Decoder(nnx.Module):
  """A DDPM++ decoder of its own width on the shared encoder's features and skips."""

  def __init__(self, *, img_resolution, out_channels, in_channels, skip_channels, model_channels,
               channel_mult, num_blocks, attn_resolutions, block_kwargs, num_groups, rngs):
    dec = {}
    takes_skip = []
    skips = list(skip_channels)
    cout = in_channels
    for level, mult in reversed(list(enumerate(channel_mult))):
      res = img_resolution >> level
      width = model_channels * mult
      if level == len(channel_mult) - 1:
        # The two bottleneck blocks keep the encoder's width; the reference's parameter counts
        # (68.28 M / 36.10 M / 4.77 M for widths 192 / 128 / 16) hold only with this layout.
        dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
        dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
        takes_skip += [False, False]
      else:
        dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
        takes_skip.append(False)
      for idx in range(num_blocks + 1):
        cin, cout = cout + skips.pop(), width
        attn = idx == num_blocks and res in attn_resolutions
        dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
        takes_skip.append(True)
    self.out_norm = GroupNorm(cout, eps=1e-6, num_groups=num_groups)
    self.out_conv = Conv2d(cout, out_channels, 3, rngs=rngs, **_INIT_ZERO)
    self.order = tuple(dec)
    self.takes_skip = tuple(takes_skip)
    self.blocks = nnx.Dict(dec)

  def __call__(self, x, skips, emb, *, train=False, rngs=None):
    skips = list(skips)
    for name, skip in zip(self.order, self.takes_skip):
      if skip:
        x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = self.blocks[name](x, emb, train=train, rngs=rngs)
    return self.out_conv(nnx.silu(self.out_norm(x)))


class MultiStageUNet(nnx.Module):
  """Shared embedding + encoder, K decoders; attributes `embedding`, `encoder`, `decoder_<k>`."""

  def __init__(self, *, img_resolution: int, in_channels: int, out_channels: int,
               label_dim: int = 0, augment_dim: int = 0, model_channels: int = 128,
               decoder_channels: Sequence[int] = (192, 128, 16),
               c_noise_boundaries: Sequence[float] = (), channel_mult: Sequence[int] = (2, 2, 2),
               channel_mult_emb: int = 4, num_blocks: int = 4,
               attn_resolutions: Sequence[int] = (16,), dropout: float = 0.13,
               label_dropout: float = 0.0, num_groups: int = 16, dtype=jnp.float32,
               remat: bool = False, rngs: nnx.Rngs):
    decoder_channels = tuple(int(c) for c in decoder_channels)
    bounds = tuple(float(b) for b in c_noise_boundaries)
    if len(bounds) != len(decoder_channels) - 1:
      raise JaxdiffError(f"model.stage_boundaries has {len(bounds)} values for "
                         f"{len(decoder_channels)} decoders; give one fewer than decoder_channels")
    if any(b1 <= b0 for b0, b1 in zip(bounds, bounds[1:])):
      raise JaxdiffError("model.stage_boundaries must be strictly increasing σ values")
    self.num_stages = len(decoder_channels)
    self.c_noise_boundaries = bounds
    self.dtype = jnp.dtype(dtype)
    emb_channels = model_channels * channel_mult_emb
    kw = _block_kwargs(emb_channels, dropout, num_groups, remat, rngs)
    self.embedding = Embedding(model_channels=model_channels, channel_mult_emb=channel_mult_emb,
                               label_dim=label_dim, augment_dim=augment_dim,
                               label_dropout=label_dropout, rngs=rngs)
    self.encoder = Encoder(img_resolution=img_resolution, in_channels=in_channels,
                           model_channels=model_channels, channel_mult=channel_mult,
                           num_blocks=num_blocks, attn_resolutions=attn_resolutions,
                           block_kwargs=kw, rngs=rngs)
    for k, width in enumerate(decoder_channels):
      setattr(self, f"decoder_{k}", Decoder(
          img_resolution=img_resolution, out_channels=out_channels,
          in_channels=self.encoder.out_channels, skip_channels=self.encoder.skip_channels,
          model_channels=width, channel_mult=channel_mult, num_blocks=num_blocks,
          attn_resolutions=attn_resolutions, block_kwargs=kw, num_groups=num_groups, rngs=rngs))

  def decoders(self) -> list:
    return [getattr(self, f"decoder_{k}") for k in range(self.num_stages)]

  def stage(self, c_noise):
    """The stage of each c_noise value ([B] -> [B] int32)."""
    return stage_of(c_noise, self.c_noise_boundaries)

  def features(self, x, c_noise, class_labels=None, augment_labels=None, *, train=False,
               rngs=None):
    """The shared part: (bottom features, skips, embedding)."""
    emb = self.embedding(c_noise, class_labels, augment_labels, train=train, rngs=rngs)
    h, skips = self.encoder(x.astype(self.dtype), emb, train=train, rngs=rngs)
    return h, skips, emb

  def __call__(self, x, c_noise, class_labels=None, augment_labels=None, *, train=False,
               rngs=None, stage=None):
    """F(x; c_noise) through the decoder of `stage` (default: the stage of c_noise[0])."""
    h, skips, emb = self.features(x, c_noise, class_labels, augment_labels, train=train, rngs=rngs)
    if stage is None:
      stage = self.stage(c_noise[:1])[0]
    if isinstance(stage, (int, np.integer)):  # known statically: no switch needed
      out = self.decoders()[int(stage)](h, skips, emb, train=train, rngs=rngs)
      return out.astype(jnp.float32)
    # Only the chosen branch runs; each branch rebuilds its decoder from its own parameter tree.
    pieces = [nnx.split(d) for d in self.decoders()]
    graphdefs = [g for g, _ in pieces]
    states = tuple(s for _, s in pieces)
    key = rngs.dropout() if (train and rngs is not None and "dropout" in rngs) else None

    def branch(k):
      def run(states, h, skips, emb, key):
        dec = nnx.merge(graphdefs[k], states[k])
        r = nnx.Rngs(dropout=key) if key is not None else None
        return dec(h, skips, emb, train=train, rngs=r).astype(jnp.float32)
      return run

    stage = jnp.clip(jnp.asarray(stage, jnp.int32), 0, self.num_stages - 1)
    return jax.lax.switch(stage, [branch(k) for k in range(self.num_stages)],
                          states, h, skips, emb, key)


def c_noise_boundaries(sigma_boundaries, precond_name: str = "edm", **precond_options):
  """σ stage boundaries mapped through the preconditioning's c_noise(σ) (must be increasing)."""
  from jaxdiff import precond as precond_lib
  sig = np.asarray(sigma_boundaries, np.float64)
  if sig.size == 0:
    return ()
  if np.any(sig <= 0) or np.any(np.diff(sig) <= 0):
    raise JaxdiffError("model.stage_boundaries must be positive, strictly increasing σ values")
  pre = precond_lib.make_precond(precond_name, **precond_options)
  with jax.ensure_compile_time_eval():  # a constant, even when built under eval_shape / jit
    c = np.asarray(pre.coefficients(jnp.asarray(sig, jnp.float32))[3], np.float64)
  if np.any(np.diff(c) <= 0):
    raise JaxdiffError(f"precond {precond_name!r} does not map σ to an increasing c_noise at "
                       f"{list(sig)}; use boundaries that fall on distinct noise levels")
  return tuple(float(v) for v in c)


def build_multistage(options, *, img_resolution, img_channels, label_dim, rngs):
  """MultiStageUNet from the network options (NetworkSpec.as_dict(); DDPM++ defaults of the reference's CIFAR-10 setting)."""
  g = options.get
  bounds = tuple(g("stage_boundaries", (2.5103, 7.6577)))
  return MultiStageUNet(
      img_resolution=img_resolution, in_channels=img_channels,
      out_channels=img_channels * int(g("out_channels_factor", 1)), label_dim=label_dim,
      augment_dim=int(g("augment_dim", 0)), model_channels=int(g("model_channels", 128)),
      decoder_channels=tuple(g("decoder_channels", (192, 128, 16))),
      c_noise_boundaries=c_noise_boundaries(bounds, g("precond_name", "edm")),
      channel_mult=tuple(g("channel_mult", (2, 2, 2))),
      channel_mult_emb=int(g("channel_mult_emb", 4)), num_blocks=int(g("num_blocks", 4)),
      attn_resolutions=tuple(g("attn_resolutions", (16,))), dropout=float(g("dropout", 0.13)),
      label_dropout=float(g("label_dropout", 0.0)), num_groups=int(g("num_groups", 16)),
      dtype=jnp.dtype(g("dtype", "float32")), remat=bool(g("remat", False)), rngs=rngs)
