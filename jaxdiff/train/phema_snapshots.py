"""Power-function EMA snapshots on disk: one .npz per (images seen, σ_rel) in `workdir/phema/`.

Each file is named `phema.snapshot_name(images, std) + ".npz"` and holds the EMA's leaves keyed by
their path in the parameter tree (`unet.enc.8x8_conv.weight`), written with fileio.atomic_write:
a crash mid-write never leaves a partial snapshot under its name, and a resumed run that reaches
the same step again replaces the file with identical bytes. Host-side NumPy; no config.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np

from jaxdiff import phema
from jaxdiff.errors import JaxdiffError
from jaxdiff.fileio import atomic_write

SNAPSHOT_DIR = "phema"


def _entry(e) -> str:
  for attr in ("key", "name", "idx"):
    v = getattr(e, attr, None)
    if v is not None:
      return str(v)
  return str(e)


def flat_leaves(tree) -> dict[str, np.ndarray]:
  """{dotted path: leaf} of a parameter pytree (nnx.State or nested dicts)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = {}
  for path, leaf in flat:
    out[".".join(_entry(e) for e in path if _entry(e) != "value")] = leaf
  return out


def snapshot_dir(workdir: str) -> str:
  return os.path.join(workdir, SNAPSHOT_DIR)


def write(workdir: str, images: int, stds: Sequence[float], emas: Sequence) -> list[str]:
  """Writes one snapshot per tracked width (emas[i] of stds[i]) at `images` seen; returns the
  paths."""
  folder = snapshot_dir(workdir)
  os.makedirs(folder, exist_ok=True)
  paths = []
  for std, ema in zip(stds, emas):
    arrays = {k: np.asarray(v) for k, v in flat_leaves(jax.device_get(ema)).items()}
    path = os.path.join(folder, phema.snapshot_name(images, std) + ".npz")
    atomic_write(path, lambda f, a=arrays: np.savez(f, **a))
    paths.append(path)
  return paths


def list_snapshots(workdir: str) -> list[tuple[int, float, str]]:
  """(images, std, path) of every snapshot in the workdir, sorted; [] when there are none."""
  folder = snapshot_dir(workdir)
  if not os.path.isdir(folder):
    return []
  out = []
  for name in os.listdir(folder):
    if not name.endswith(".npz"):
      continue
    parsed = phema.parse_snapshot_name(name[:-4])
    if parsed is not None:
      out.append((parsed[0], parsed[1], os.path.join(folder, name)))
  return sorted(out)


def read(path: str, like):
  """The snapshot at `path` as a pytree shaped like `like` (params or their ShapeDtypeStructs),
  each leaf in `like`'s dtype. Refuses a file whose keys or shapes do not fit."""
  want = flat_leaves(like)
  with np.load(path, allow_pickle=False) as f:
    got = {k: f[k] for k in f.files}
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  bad = [k for k in want if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
  if missing or extra or bad:
    raise JaxdiffError(f"snapshot {path!r} does not fit this run's network (missing {missing[:2]}, "
                       f"unexpected {extra[:2]}, mis-shaped {bad[:2]}); was it written by another "
                       "config?")
  leaves, treedef = jax.tree.flatten(like)
  keys = list(want)  # flat_leaves keeps the tree's flatten order
  return jax.tree.unflatten(treedef, [got[k].astype(l.dtype) for k, l in zip(keys, leaves)])


def reconstruct_files(paths: Sequence[str], coefficients, like, progress: bool = False):
  """Σ_i coefficients[i] · snapshot_i for the snapshot files `paths` ([len(paths)] weights, one
  output), read one file at a time and accumulated in float64 (phema.reconstruct's sum, without
  holding every snapshot in memory). Returns a pytree shaped like `like`, in its dtypes."""
  x = np.asarray(coefficients, np.float64).reshape(-1)
  if x.shape[0] != len(paths):
    raise ValueError(f"{x.shape[0]} coefficients for {len(paths)} snapshots")
  leaves, treedef = jax.tree.flatten(like)
  acc = [np.zeros(l.shape, np.float64) for l in leaves]
  pairs = zip(x, paths)
  if progress:
    from jaxdiff.progress import bar
    pairs = bar(pairs, total=len(paths), desc="phema", unit="snapshot")
  for xi, path in pairs:
    for a, v in zip(acc, jax.tree.leaves(read(path, like))):
      a += xi * np.asarray(v, np.float64)
  return jax.tree.unflatten(treedef, [a.astype(l.dtype) for a, l in zip(acc, leaves)])
