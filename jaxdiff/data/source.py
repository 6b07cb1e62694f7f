"""The data interface every dataset implements, and the deterministic, resumable batch order.

A source is random-access: `get(indices)` returns images as float32 NHWC in [-1, 1] and int32 labels.
The batch order (a pure function of seed and step) is data.pipeline's.
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


class XFlipSource:
  """The reference's `--xflip` dataset (NVlabs/edm training/dataset.py): the dataset doubled with
  mirrored copies; index i < N is image i, index N + i is image i flipped left-right."""

  def __init__(self, source):
    self.source = source
    self.name = f"{source.name} (x-flipped)"
    self.resolution, self.channels = source.resolution, source.channels
    self.num_classes = source.num_classes

  def __len__(self) -> int:
    return 2 * len(self.source)

  def get(self, indices):
    indices = np.asarray(indices, np.int64)
    n = len(self.source)
    if indices.size and (indices.min() < 0 or indices.max() >= 2 * n):
      raise IndexError(f"index outside [0, {2 * n})")
    images, labels = self.source.get(indices % n)
    images = np.asarray(images)
    flip = (indices >= n)[:, None, None, None]
    return np.where(flip, images[:, :, ::-1], images), labels
