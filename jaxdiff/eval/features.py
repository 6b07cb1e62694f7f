"""Batched, jit-compiled feature extraction, the batch sharded over all devices ('data' mesh axis)."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff.progress import bar


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named 'data' over `devices` (default: all)."""
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), ("data",), devices=devices)


def extract_features(fn, params, images, *, batch_size: int = 64, mesh=None, desc: str = "features",
                     progress: bool = True) -> np.ndarray:
  """fn(params, images_batch) -> [B, D], applied over `images` [N, ...] in fixed-size batches.

  Every batch (the last one padded by repeating its final row) has the same shape, so one compile
  serves all of them; padded rows are dropped. `batch_size` is rounded up to a multiple of the
  device count; params are replicated, batches split along 'data'. Returns float32 [N, D].
  """
  images = np.asarray(images)
  n = images.shape[0]
  if n == 0:
    raise ValueError("no images to extract features from")
  mesh = mesh if mesh is not None else data_mesh()
  ndev = mesh.devices.size
  batch_size = -(-max(1, min(batch_size, n)) // ndev) * ndev
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  params = jax.device_put(params, replicated)
  step = jax.jit(fn, in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding)
  out = []
  with bar(total=n, desc=desc, unit="img", disable=not progress) as pbar:
    for start in range(0, n, batch_size):
      chunk = images[start:start + batch_size]
      real = chunk.shape[0]
      if real < batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
      feats = step(params, jax.device_put(chunk, batch_sharding))
      out.append(np.asarray(feats, np.float32)[:real])
      pbar.update(real)
  return np.concatenate(out, axis=0)


def inception_features(images, model=None, weights: str | None = None, *, batch_size: int = 64,
                       mesh=None, progress: bool = True) -> np.ndarray:
  """Pool3 features [N, 2048] of uint8 images [N, H, W, C] (C = 1 or 3) with the FID Inception."""
  from jaxdiff.eval import inception as inc
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, 1 or 3], got {images.dtype} {images.shape}")
  model = model if model is not None else inc.load_inception(weights)
  graphdef, state = nnx.split(model)

  def fn(state, x):
    return nnx.merge(graphdef, state)(inc.preprocess(x))

  return extract_features(fn, state, images, batch_size=batch_size, mesh=mesh,
                          desc="inception features", progress=progress)
