"""Conversions between model space ([-1, 1] float) and uint8 images, and PNG sample grids."""

from __future__ import annotations

import math
import os

import numpy as np


def to_uint8(x) -> np.ndarray:
  """[-1, 1] -> uint8 as the reference writes images: floor(127.5·x + 128), clipped."""
  return np.clip(np.floor(np.asarray(x, np.float32) * 127.5 + 128.0), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, cols: int | None = None, min_size: int = 32) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 image [rows·H', cols·W', C], small images enlarged (nearest)."""
  n, h, w, c = images.shape
  cols = cols or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  scale = max(1, int(math.ceil(min_size / max(h, w))))
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  h, w = h * scale, w * scale
  out = np.zeros((rows * h, cols * w, c), np.uint8)
  for i in range(n):
    r, k = divmod(i, cols)
    out[r * h:(r + 1) * h, k * w:(k + 1) * w] = images[i]
  return out


def save_grid(images: np.ndarray, path: str, cols: int | None = None) -> None:
  from PIL import Image
  g = grid(images, cols)
  img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  img.save(tmp)
  os.replace(tmp, path)
