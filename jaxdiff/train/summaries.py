"""TensorBoard image summaries of sample grids, beside the scalars the training loop logs."""

from __future__ import annotations

import numpy as np

from jaxdiff.images import grid


def add_sample_grid(writer, images: np.ndarray, step: int, tag: str = "samples",
                    cols: int | None = None, **grid_kwargs) -> np.ndarray:
  """Logs `grid(images, cols, **grid_kwargs)` as image `tag` at `step` (HWC, uint8 RGB); returns
  the grid. Grayscale grids are repeated to 3 channels (the PNG encoder wants 1-channel images 2-D).
  """
  g = grid(images, cols, **grid_kwargs)
  rgb = np.repeat(g, 3, axis=2) if g.shape[-1] == 1 else g
  writer.add_image(tag, rgb, int(step), dataformats="HWC")
  return g
