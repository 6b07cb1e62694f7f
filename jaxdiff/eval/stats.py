"""Reference statistics files: an `.npz` with `mu` [D] and `sigma` [D, D] (as the FID reference writes
them), optionally `features` [N, D] so that KID and precision/recall can use the same file."""

from __future__ import annotations

import os

import numpy as np

from jaxdiff.errors import JaxdiffError
from jaxdiff.fileio import atomic_savez


def save_stats(path: str, mu, sigma, features=None) -> None:
  mu = np.asarray(mu, np.float64)
  sigma = np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"mu must be [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
  arrays = {"mu": mu, "sigma": sigma}
  if features is not None:
    arrays["features"] = np.asarray(features, np.float32)
  atomic_savez(path, **arrays)


def load_stats(path: str) -> dict:
  """{'mu', 'sigma'} (float64) and 'features' when the file has them."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise JaxdiffError(f"reference statistics file {path!r} not found: pass an existing .npz "
                       "with 'mu' and 'sigma' (write one with `jaxdiff eval --samples REAL.npz "
                       "--metric fid --save-ref STATS.npz`)")
  try:
    with np.load(path) as z:
      data = {k: z[k] for k in z.files}
  except Exception as e:  # not a zip / corrupt
    raise JaxdiffError(f"cannot read reference statistics {path!r} as .npz ({e})") from e
  missing = [k for k in ("mu", "sigma") if k not in data]
  if missing:
    raise JaxdiffError(f"reference statistics {path!r} lack key(s) {missing} (has {sorted(data)}): "
                       "the file must hold 'mu' [D] and 'sigma' [D, D]")
  mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise JaxdiffError(f"reference statistics {path!r} have mu {mu.shape} and sigma {sigma.shape}; "
                       "expected [D] and [D, D]")
  out = {"mu": mu, "sigma": sigma}
  if "features" in data:
    out["features"] = data["features"]
  return out


def load_samples(path: str, what: str = "samples") -> tuple[np.ndarray, np.ndarray | None]:
  """A sample file (`images` uint8 [N, H, W, C], optional `labels` int [N]) → (images, labels)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise JaxdiffError(f"{what} file {path!r} not found: write one with `jaxdiff sample --out`")
  try:
    with np.load(path) as z:
      if "images" not in z.files:
        raise JaxdiffError(f"{what} file {path!r} has no 'images' array (has {z.files}); expected "
                           "uint8 [N, H, W, C] as `jaxdiff sample` writes")
      images = z["images"]
      labels = z["labels"] if "labels" in z.files else None
  except JaxdiffError:
    raise
  except Exception as e:
    raise JaxdiffError(f"cannot read {what} file {path!r} as .npz ({e})") from e
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise JaxdiffError(f"{what} in {path!r} are {images.dtype} {images.shape}; expected uint8 "
                       "[N, H, W, C] with C = 1 or 3")
  if labels is not None:
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
      raise JaxdiffError(f"labels in {path!r} are {labels.dtype} {labels.shape}; expected int "
                         f"[{images.shape[0]}]")
    labels = labels.astype(np.int32)
  return images, labels
