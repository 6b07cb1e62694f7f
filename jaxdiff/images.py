"""Conversions between model space ([-1, 1] float) and uint8 images, and PNG sample grids.

A grid puts a gutter between images (8x8 digits that touch read as stripes), enlarges small images
by an integer factor with nearest-neighbour (no blur, every source pixel stays a square), and can
write a label left of each row (PIL's bundled default font: nothing is downloaded).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from jaxdiff import fileio


def to_uint8(x) -> np.ndarray:
  """[-1, 1] -> uint8 as the reference writes images: floor(127.5·x + 128), clipped."""
  return np.clip(np.floor(np.asarray(x, np.float32) * 127.5 + 128.0), 0, 255).astype(np.uint8)


def upscale_factor(h: int, w: int, min_size: int) -> int:
  """The integer factor that makes an h x w image at least `min_size` on its longer side."""
  return max(1, int(math.ceil(min_size / max(h, w))))


def _label_strip(labels: Sequence[str], rows: int, cell_h: int, gutter: int, channels: int,
                 pad_value: int, ink: int) -> np.ndarray:
  """uint8 [rows·cell_h + (rows-1)·gutter, W, C]: each row's label, vertically centred on it."""
  from PIL import Image, ImageDraw, ImageFont
  font = ImageFont.load_default()
  probe = ImageDraw.Draw(Image.new("L", (1, 1)))
  boxes = [probe.textbbox((0, 0), str(s), font=font) for s in labels]
  width = max(b[2] for b in boxes) + 2 * max(gutter, 2)
  height = rows * cell_h + (rows - 1) * gutter
  strip = Image.new("L", (width, height), pad_value)
  for r, (text, box) in enumerate(zip(labels, boxes)):
    if r >= rows or not str(text):
      continue
    # Drawn on the row's own band, so a label taller than the row is clipped, never spills over.
    band = Image.new("L", (width, cell_h), pad_value)
    top = (cell_h - (box[3] - box[1])) // 2 - box[1]
    ImageDraw.Draw(band).text((max(gutter, 2) - box[0], top), str(text), fill=ink, font=font)
    strip.paste(band, (0, r * (cell_h + gutter)))
  out = np.asarray(strip, np.uint8)[..., None]
  return np.repeat(out, channels, axis=2)


def grid(images: np.ndarray, cols: int | None = None, min_size: int = 32, gutter: int = 2,
         pad_value: int = 255, row_labels: Sequence[str] | None = None) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 image of the N images in rows of `cols`.

  Each image is enlarged by `upscale_factor(H, W, min_size)` (nearest neighbour); `gutter` pixels
  of `pad_value` separate neighbouring images (none at the outer edge) and fill unused cells.
  `row_labels[r]` (a string, '' for none) is written in a strip left of row r, dark on `pad_value`.
  Shape: [rows·H' + (rows-1)·g, L + cols·W' + (cols-1)·g, C] with L the label strip's width (0
  without labels).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] == 0:
    raise ValueError(f"grid needs uint8 [N, H, W, C] with N >= 1, got {images.dtype} "
                     f"{images.shape}")
  n, h, w, c = images.shape
  cols = max(1, min(cols or int(math.ceil(math.sqrt(n))), n))
  rows = int(math.ceil(n / cols))
  scale = upscale_factor(h, w, min_size)
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  h, w = h * scale, w * scale
  out = np.full((rows * h + (rows - 1) * gutter, cols * w + (cols - 1) * gutter, c), pad_value,
                np.uint8)
  for i in range(n):
    r, k = divmod(i, cols)
    y, x = r * (h + gutter), k * (w + gutter)
    out[y:y + h, x:x + w] = images[i]
  if row_labels is not None:
    ink = 0 if pad_value >= 128 else 255
    strip = _label_strip(list(row_labels), rows, h, gutter, c, pad_value, ink)
    out = np.concatenate([strip, out], axis=1)
  return out


def to_pil(g: np.ndarray):
  from PIL import Image
  return Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)


def save_grid(images: np.ndarray, path: str, cols: int | None = None, **kwargs) -> np.ndarray:
  """Writes `grid(images, cols, **kwargs)` as a PNG at `path` (atomically) and returns it."""
  g = grid(images, cols, **kwargs)
  img = to_pil(g)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fileio.atomic_write(path, lambda f: img.save(f, format="PNG"))
  return g
