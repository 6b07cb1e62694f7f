"""The data interface every dataset implements, and the deterministic, resumable batch order.

A source is random-access: `get(indices)` returns images as float32 NHWC in [-1, 1] and int32 labels.
The order of examples is a pure function of (seed, step), so a resumed run reads exactly the batches
it would have read, and each host reads only its own slice of the global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from jaxdiff.errors import JaxdiffError


class DataSource(Protocol):
  name: str
  resolution: int
  channels: int
  num_classes: int  # 0 when unlabelled

  def __len__(self) -> int: ...

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """An in-memory dataset: images float32 [N, H, W, C] in [-1, 1], labels int32 [N]."""
  name: str
  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  @property
  def resolution(self) -> int:
    return self.images.shape[1]

  @property
  def channels(self) -> int:
    return self.images.shape[3]

  def __len__(self) -> int:
    return len(self.images)

  def get(self, indices):
    return self.images[indices], self.labels[indices]


def check_source(source, *, resolution: int, channels: int, num_classes: int) -> None:
  """Fails with a one-line message when a dataset does not match what the config expects."""
  n = len(source)
  if n == 0:
    raise JaxdiffError(f"dataset {source.name!r} is empty; point data.name at a dataset with images")
  images, labels = source.get(np.arange(min(n, 8)))
  if images.ndim != 4 or images.shape[1:] != (resolution, resolution, channels):
    raise JaxdiffError(
        f"dataset {source.name!r} has images of shape {tuple(images.shape[1:])}, but the config "
        f"expects {(resolution, resolution, channels)} (H, W, C); set data.resolution / "
        f"data.channels to match the data, or resize the data")
  if num_classes:
    if source.num_classes == 0:
      raise JaxdiffError(f"dataset {source.name!r} has no labels; set data.num_classes=0 "
                         "to train unconditionally")
    lo, hi = int(np.min(labels)), int(np.max(labels))
    if lo < 0 or hi >= num_classes:
      raise JaxdiffError(f"dataset {source.name!r} has labels in [{lo}, {hi}], outside "
                         f"[0, {num_classes - 1}]; set data.num_classes to the number of classes")


def batch_indices(step: int, batch_size: int, num_examples: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Indices of this host's share of global batch `step`: epochs are seeded permutations."""
  if batch_size % process_count:
    raise JaxdiffError(f"training.batch_size={batch_size} is not divisible by the "
                       f"{process_count} hosts")
  start = step * batch_size
  positions = np.arange(start, start + batch_size)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
    sel = epochs == epoch
    out[sel] = perm[offsets[sel]]
  per_host = batch_size // process_count
  return out[process_index * per_host:(process_index + 1) * per_host]
