"""A small noise-level-conditioned classifier d(x_σ, σ) for discriminator guidance on small images.

The design is the encoder half of the digits U-Net (nets/unet.py) with a pooled linear head:
conv_in, then per resolution level `num_blocks` residual blocks (GroupNorm, SiLU, 3x3 convs, the
noise / label embedding as a per-channel scale and shift) and a strided 3x3 conv between levels, one
middle residual block, GroupNorm + SiLU, global average pooling and a linear layer to one logit.
The noise embedding is the positional embedding of c_noise through a two-layer MLP, as in the
U-Net; class labels (one-hot) are added to it through a linear map when label_dim > 0.

The reference (alsdudrla10/DG) instead puts a small attention-pooled head on the features of a
frozen, pretrained ADM noisy classifier; there is no such pretrained extractor for 8x8 digits, so
this network is trained end to end.

Same call as every network (docs/ARCHITECTURE.md) except the output: logits [B] (float32), the
discriminator's log(d / (1 − d)), instead of an image.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxdiff.nets import layers
from jaxdiff.nets.unet import ResBlock, make_group_norm, positional_embedding


class Discriminator(nnx.Module):
  def __init__(self, *, img_resolution: int, in_channels: int, label_dim: int = 0,
               model_channels: int = 32, channel_mult=(1, 2), num_blocks: int = 1,
               dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
    del img_resolution  # global pooling: any resolution divisible by 2^(levels-1)
    self.model_channels = model_channels
    self.dtype = dtype
    emb_dim = 4 * model_channels
    self.map0 = layers.linear(model_channels, emb_dim, rngs=rngs)
    self.map1 = layers.linear(emb_dim, emb_dim, rngs=rngs)
    self.map_label = (layers.linear(label_dim, model_channels, use_bias=False, rngs=rngs)
                      if label_dim else None)
    self.conv_in = layers.conv(in_channels, model_channels, (3, 3), dtype=dtype, rngs=rngs)
    blocks, c = [], model_channels
    for level, mult in enumerate(channel_mult):
      for _ in range(num_blocks):
        blocks.append(ResBlock(c, model_channels * mult, emb_dim, dropout, dtype, rngs=rngs))
        c = model_channels * mult
      if level != len(channel_mult) - 1:
        blocks.append(layers.conv(c, c, (3, 3), strides=(2, 2), dtype=dtype, rngs=rngs))
    blocks.append(ResBlock(c, c, emb_dim, dropout, dtype, rngs=rngs))
    self.blocks = nnx.List(blocks)
    self.norm_out = make_group_norm(c, dtype, rngs)
    self.head = layers.linear(c, 1, rngs=rngs)

  def __call__(self, x, c_noise, class_labels=None, augment_labels=None, *, train=False,
               rngs=None):
    del augment_labels
    emb = positional_embedding(c_noise, self.model_channels)
    if self.map_label is not None:
      emb = emb + self.map_label(class_labels.astype(jnp.float32))
    emb = nnx.silu(self.map1(nnx.silu(self.map0(emb)))).astype(self.dtype)
    h = self.conv_in(x.astype(self.dtype))
    for layer in self.blocks:
      h = layer(h, emb, train=train, rngs=rngs) if isinstance(layer, ResBlock) else layer(h)
    h = nnx.silu(self.norm_out(h)).astype(jnp.float32)
    return self.head(jnp.mean(h, axis=(1, 2)))[:, 0]  # pooled in float32


def build(options, *, img_resolution, img_channels, label_dim, rngs):
  return Discriminator(img_resolution=img_resolution, in_channels=img_channels,
                       label_dim=label_dim, model_channels=options["model_channels"],
                       channel_mult=tuple(options["channel_mult"]), num_blocks=options["num_blocks"],
                       dropout=options.get("dropout", 0.0),
                       dtype=jnp.dtype(options.get("dtype", "float32")), rngs=rngs)
