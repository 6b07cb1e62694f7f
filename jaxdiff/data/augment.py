"""The reference's non-leaky augmentation (Karras et al. 2022, App. F.2; its AugmentPipe), in JAX.

Each image is x/y-flipped, scaled, rotated, anisotropically stretched and translated with
probability p per transform; the draws become 9 conditioning numbers that the network receives as
`augment_labels`, so it learns to tell augmented images apart and samples with zeros produce
un-augmented images. Order and meaning of the 9 numbers follow the reference:

  [xflip, yflip, scale w, cos(rot)-1, sin(rot), w_aniso·cos r, w_aniso·sin r, tx, ty]

with the reference's CIFAR-10 settings (xflip=1e8, yflip=scale=rotate_frac=aniso=translate_frac=1)
and constants (scale_std 0.2, rotate_frac_max 1, aniso_std 0.2, aniso_rotate_prob 0.5,
translate_frac_std 0.125). Resampling follows the reference too: reflect-pad, upsample 2× with
the sym6 wavelet low-pass filter, sample bilinearly (zeros outside) on the 2× grid, low-pass
and decimate with the same filter, crop. The reference pads by a margin computed over the batch
(at most size − 1 pixels); jit needs a static shape, so we always pad by size − 1, which reads the
same reflected pixels wherever the reference's samples land.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


NUM_LABELS = 9


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  p: float
  xflip: float = 1e8
  yflip: float = 1.0
  scale: float = 1.0
  rotate_frac: float = 1.0
  aniso: float = 1.0
  translate_frac: float = 1.0
  scale_std: float = 0.2
  rotate_frac_max: float = 1.0
  aniso_std: float = 0.2
  aniso_rotate_prob: float = 0.5
  translate_frac_std: float = 0.125


def _rot(a):
  c, s = jnp.cos(a), jnp.sin(a)
  z, o = jnp.zeros_like(a), jnp.ones_like(a)
  return jnp.stack([jnp.stack([c, -s, z], -1), jnp.stack([s, c, z], -1),
                    jnp.stack([z, z, o], -1)], -2)


def _scale(sx, sy):
  z, o = jnp.zeros_like(sx), jnp.ones_like(sx)
  return jnp.stack([jnp.stack([sx, z, z], -1), jnp.stack([z, sy, z], -1),
                    jnp.stack([z, z, o], -1)], -2)


def _translate(tx, ty):
  z, o = jnp.zeros_like(tx), jnp.ones_like(tx)
  return jnp.stack([jnp.stack([o, z, tx], -1), jnp.stack([z, o, ty], -1),
                    jnp.stack([z, z, o], -1)], -2)


def draw(cfg: AugmentConfig, key, n: int):
  """Per-image flips [n] (0/1), inverse geometric matrices G_inv [n, 3, 3] and the 9 labels."""
  k = iter(jax.random.split(key, 16))
  uniform = lambda: jax.random.uniform(next(k), (n,))  # noqa: E731
  gate = lambda prob, w: jnp.where(uniform() < prob * cfg.p, w, jnp.zeros_like(w))  # noqa: E731
  xflip = gate(cfg.xflip, jax.random.bernoulli(next(k), 0.5, (n,)).astype(jnp.float32))
  yflip = gate(cfg.yflip, jax.random.bernoulli(next(k), 0.5, (n,)).astype(jnp.float32))
  eye = jnp.broadcast_to(jnp.eye(3), (n, 3, 3))
  # scale: isotropic 2^(w·std), w ~ N(0, 1)
  w_s = gate(cfg.scale, jax.random.normal(next(k), (n,)))
  s = jnp.exp2(w_s * cfg.scale_std)
  g = eye @ _scale(1 / s, 1 / s)
  # rotation by w ~ U(-π·max, π·max)
  w_r = gate(cfg.rotate_frac, (uniform() * 2 - 1) * np.pi * cfg.rotate_frac_max)
  g = g @ _rot(w_r)  # rotate2d_inv(-w) = rotate2d(w)
  # anisotropic scale 2^(±w·std) along a direction r
  w_a = gate(cfg.aniso, jax.random.normal(next(k), (n,)))
  r = (uniform() * 2 - 1) * np.pi
  r = jnp.where(uniform() < cfg.aniso_rotate_prob, r, 0.0)
  sa = jnp.exp2(w_a * cfg.aniso_std)
  g = g @ _rot(-r) @ _scale(1 / sa, sa) @ _rot(r)
  # translation by w·std of the image size
  u = jax.random.uniform(next(k), (n,)) < cfg.translate_frac * cfg.p
  t = jnp.where(u[None], jax.random.normal(next(k), (2, n)), 0.0)
  labels = jnp.stack([xflip, yflip, w_s, jnp.cos(w_r) - 1, jnp.sin(w_r), w_a * jnp.cos(r),
                      w_a * jnp.sin(r), t[0], t[1]], axis=1)
  return xflip, yflip, g, t * cfg.translate_frac_std, labels


# sym6 wavelet low-pass (scaling) filter, the reference's `wavelets['sym6']`: orthonormal, so
# upsampling with it and downsampling with it is the identity on smooth content.
SYM6 = np.asarray([0.015404109327027373, 0.0034907120842174702, -0.11799011114819057,
                   -0.048311742585633, 0.4910559419267466, 0.787641141030194,
                   0.3379294217276218, -0.07263752278646252, -0.021060292512300564,
                   0.04472490177066578, 0.0017677118642428036, -0.007800708325034148],
                  np.float32)
_HZ_PAD = len(SYM6) // 4


def _correlate(x, taps, axis: int, pad: int, stride: int = 1):
  """torch conv1d semantics along `axis`: zero-pad both sides, cross-correlate, stride."""
  x = jnp.moveaxis(x, axis, 0)
  n = x.shape[0] + 2 * pad - len(taps) + 1
  xp = jnp.pad(x, [(pad, pad)] + [(0, 0)] * (x.ndim - 1))
  out = sum(float(t) * xp[k:k + n] for k, t in enumerate(taps))
  return jnp.moveaxis(out[::stride], 0, axis)


def _upsample2(x, axis: int):
  """Zero-insert (length 2L − 1), then filter with the reversed sym6: length 2L."""
  x = jnp.moveaxis(x, axis, 0)
  up = jnp.zeros((2 * x.shape[0] - 1,) + x.shape[1:], x.dtype).at[::2].set(x)
  return jnp.moveaxis(_correlate(up, SYM6[::-1], 0, (len(SYM6) + 1) // 2), 0, axis)


def _downsample2(x, axis: int):
  return _correlate(x, SYM6, axis, (len(SYM6) - 1) // 2, stride=2)


def _bilinear_zeros(image, x, y):
  """torch grid_sample(bilinear, zeros) at pixel coordinates (x, y) of image [H, W, C]."""
  h, w, _ = image.shape
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

  def at(yy, xx):
    inside = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w))[..., None]
    return jnp.where(inside, image[jnp.clip(yy, 0, h - 1), jnp.clip(xx, 0, w - 1)], 0.0)
  return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
          + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def warp(image, g_inv):
  """image [H, W, C] resampled at G_inv·(pixel − centre) as the reference's AugmentPipe does."""
  h, w, _ = image.shape
  my, mx = h - 1, w - 1  # static margin: the largest the reference uses
  x = jnp.pad(image, ((my, my), (mx, mx), (0, 0)), mode="reflect")
  x = _upsample2(_upsample2(x, 1), 0)                       # [2(H + 2my), 2(W + 2mx), C]
  # Output grid: (H + 2·pad) × (W + 2·pad) pixels at 2× resolution, centred on the image.
  ho, wo = 2 * (h + 2 * _HZ_PAD), 2 * (w + 2 * _HZ_PAD)
  # The reference's chain (affine_grid / grid_sample with align_corners=False, G_inv conjugated by
  # scale 2 and by a −½ shift for the upsampler's phase) in pixel units: output pixel j has
  # centred coordinate u = j + ½ − wo/2 on the 2× grid; its source on the upsampled image is
  # 2·G_inv((u + ½)/2) − ½, measured from that image's centre (W_up − 1)/2.
  ys, xs = jnp.meshgrid((jnp.arange(ho, dtype=jnp.float32) + 1.0 - ho / 2) / 2,
                        (jnp.arange(wo, dtype=jnp.float32) + 1.0 - wo / 2) / 2, indexing="ij")
  src = jnp.einsum("ij,jhw->ihw", g_inv, jnp.stack([xs, ys, jnp.ones_like(xs)]))
  sx = 2 * src[0] - 0.5 + (x.shape[1] - 1) / 2
  sy = 2 * src[1] - 0.5 + (x.shape[0] - 1) / 2
  out = _bilinear_zeros(x, sx, sy)
  out = _downsample2(_downsample2(out, 1), 0)
  return out[_HZ_PAD:-_HZ_PAD, _HZ_PAD:-_HZ_PAD]


def augment(cfg: AugmentConfig, key, images):
  """images [N, H, W, C] -> (augmented images, augment_labels [N, 9]); both float32."""
  images = jnp.asarray(images, jnp.float32)
  n, h, w, _ = images.shape
  xflip, yflip, g, t, labels = draw(cfg, key, n)
  images = jnp.where(xflip[:, None, None, None] == 1, images[:, :, ::-1], images)
  images = jnp.where(yflip[:, None, None, None] == 1, images[:, ::-1], images)
  g = g @ _translate(-t[0] * w, -t[1] * h)  # translate2d_inv(tx, ty)
  images = jax.vmap(warp)(images, g)
  return images, labels
