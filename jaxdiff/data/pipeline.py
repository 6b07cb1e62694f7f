"""The training input pipeline on grain: a deterministic, resumable, per-host batch stream.

Global order: the example indices of epoch e are grain's seeded permutation of the dataset
(`MapDataset.shuffle(seed).repeat()`, a fresh permutation per epoch); global batch `step` is
positions [step·B, (step+1)·B) of that stream. Each host reads its `ShardOptions` share of every
global batch (shard i of n: rows [i·B/n, (i+1)·B/n)), so the global batch, and with it the run, is
the same on any number of hosts and devices. Batch `step` is element `step` of a grain MapDataset,
so a run resumed at step s reads exactly the batches it would have read; the iterator's state is
also saved with each checkpoint (`state()`) and used when the pipeline is rebuilt the same way.

Decoding (`source.get`, one call per batch) runs in `workers` grain worker processes when
workers > 0, in a grain reader thread otherwise; either way `depth` batches are read ahead.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from jaxdiff.errors import JaxdiffError


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  batch_size: int          # global batch
  seed: int
  workers: int = 0         # grain worker processes decoding batches; 0: a reader thread
  depth: int = 2           # batches read ahead
  xflip: bool = False      # the reference's --xflip: the dataset doubled with mirrored copies


def pipeline_config(data, batch_size: int, seed: int) -> PipelineConfig:
  """From the experiment's DataSpec (data.workers, data.prefetch, data.xflip)."""
  return PipelineConfig(batch_size=int(batch_size), seed=int(seed), workers=int(data.workers),
                        depth=int(data.prefetch), xflip=bool(data.xflip))


def host_shard(process_index: int, process_count: int):
  import grain
  return grain.sharding.ShardOptions(shard_index=process_index, shard_count=process_count)


def _host_rows(batch_size: int, shard) -> tuple[int, int]:
  if batch_size % shard.shard_count:
    raise JaxdiffError(f"training.batch_size={batch_size} is not divisible by the "
                       f"{shard.shard_count} hosts")
  per_host = batch_size // shard.shard_count
  return shard.shard_index * per_host, (shard.shard_index + 1) * per_host


def _absl_flags_ready() -> None:
  """grain's worker processes read absl flags; outside an absl app they were never parsed, so
  take their defaults (jaxdiff's CLI is argparse)."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class _ReadBatch:
  """indices [b] -> (images, labels): a plain picklable callable, so worker processes can run it."""

  def __init__(self, source):
    self.source = source

  def __call__(self, indices):
    images, labels = self.source.get(np.asarray(indices, np.int64))
    return np.asarray(images, np.float32), np.asarray(labels, np.int32)


def index_dataset(num_examples: int, batch_size: int, seed: int, shard):
  """grain MapDataset whose element k is this host's example indices [B/n] of global batch k."""
  import grain
  lo, hi = _host_rows(batch_size, shard)
  # seed: grain's shuffle takes an unsigned 32-bit seed.
  stream = grain.MapDataset.range(num_examples).shuffle(seed=int(seed) % 2**32).repeat()
  batches = stream.batch(batch_size)
  if (lo, hi) == (0, batch_size):
    return batches
  return batches.map(lambda idx: idx[lo:hi])


def batch_indices(step: int, batch_size: int, num_examples: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """This host's example indices of global batch `step` (a pure function of its arguments)."""
  return np.asarray(index_dataset(num_examples, batch_size, seed,
                                  host_shard(process_index, process_count))[step])


class Batches:
  """Iterates (step, images, labels) for steps start..stop-1 of `source` under `cfg`.

  `state()` is a JSON-able record of the position; passing it back as `resume` (with the same
  config and start step it was made under) continues from there. Without one the stream starts
  at `start`; both give the same batches.
  """

  def __init__(self, source, cfg: PipelineConfig, start: int, stop: int, process_index: int = 0,
               process_count: int = 1, resume: dict | None = None):
    import grain
    from jaxdiff.data.source import XFlipSource
    self._cfg, self._stop = cfg, stop
    if cfg.xflip:
      source = XFlipSource(source)
    shard = host_shard(process_index, process_count)
    idx = index_dataset(len(source), cfg.batch_size, cfg.seed, shard)
    key = dict(workers=int(cfg.workers), xflip=bool(cfg.xflip), process_count=int(process_count),
               num_examples=len(source), batch_size=int(cfg.batch_size), seed=int(cfg.seed))
    # A saved state is only meaningful for the same pipeline built from the same first step.
    if resume is not None and resume.get("key") == key and resume["offset"] <= start:
      offset, state = int(resume["offset"]), resume["state"]
    else:
      offset, state = start, None
    self._offset, self._key, self._step = offset, key, start
    ds = idx[offset:stop].map(_ReadBatch(source))
    if cfg.workers > 0:
      _absl_flags_ready()
      ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(cfg.workers),
                                                       per_worker_buffer_size=max(cfg.depth, 1)))
    else:
      ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                prefetch_buffer_size=max(cfg.depth, 1)))
    self._it = iter(ds)
    if state is not None:
      self._it.set_state(json.loads(state))

  def __iter__(self):
    return self

  def __next__(self):
    if self._step >= self._stop:
      raise StopIteration
    images, labels = next(self._it)
    step, self._step = self._step, self._step + 1
    return step, images, labels

  def state(self) -> dict:
    """The position after the batches consumed so far: stored in each checkpoint's meta."""
    return dict(key=self._key, offset=self._offset, state=json.dumps(self._it.get_state()))

  def close(self):
    close = getattr(self._it, "close", None)
    if close is not None:
      close()
