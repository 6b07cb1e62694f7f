"""Device meshes and layouts for the train step: the same code on 1 device, N devices, N hosts.

One mesh axis, 'data'. The batch is split along it; the training state is replicated (data
parallel) or, with `fsdp`, each array of params / EMA / optimizer state is split along its largest
axis that the device count divides (arrays with no such axis stay replicated). `jax.jit` compiled
with these shardings inserts the collectives itself; no pmap.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdiff.errors import JaxdiffError

AXIS = "data"

# Set by the launchers / cluster schedulers when a run spans several hosts.
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS",
                    "OMPI_COMM_WORLD_SIZE", "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS")
_initialized = False


def wants_distributed(flag) -> bool:
  """training.distributed: True / False, or "auto" (None): on when a cluster's env vars say so."""
  if flag is None or flag == "auto":
    if os.environ.get("SLURM_NTASKS", "1") == "1" and "SLURM_NTASKS" in os.environ:
      return False  # a one-task Slurm job is a single host
    return any(k in os.environ for k in _DISTRIBUTED_ENV)
  return bool(flag)


def maybe_initialize_distributed(flag=None) -> None:
  """Calls jax.distributed.initialize() once, before any device is touched, when wanted."""
  global _initialized
  if _initialized or not wants_distributed(flag):
    return
  try:
    # Explicit env vars (our GPU launcher) win; otherwise JAX detects Cloud TPU / Slurm / MPI.
    kw = {}
    if "JAX_NUM_PROCESSES" in os.environ and "JAX_PROCESS_ID" in os.environ:
      kw = dict(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kw)
  except (RuntimeError, ValueError) as e:
    raise JaxdiffError(f"multi-host start failed ({' '.join(str(e).split())[:160]}); set "
                       "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or "
                       "training.distributed=False") from None
  _initialized = True


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, n: int) -> P:
  """Split the largest axis that n divides (ties: the later axis); replicate if none does."""
  if n == 1:
    return P()
  best = None
  for axis, size in enumerate(shape):
    if size % n == 0 and size >= n and (best is None or size >= shape[best]):
      best = axis
  if best is None:
    return P()
  return P(*([None] * best + [AXIS]))


def state_sharding(state, mesh: Mesh, fsdp: bool = False):
  """A sharding for every leaf of a TrainState (arrays or ShapeDtypeStructs)."""
  rep = replicated(mesh)
  if not fsdp:
    return jax.tree.map(lambda _: rep, state)
  n = mesh.devices.size

  def leaf(x):
    return NamedSharding(mesh, fsdp_spec(x.shape, n)) if np.ndim(x) else rep

  split = lambda tree: jax.tree.map(leaf, tree)  # noqa: E731
  return state.replace(step=rep, rng=rep, params=split(state.params), ema=split(state.ema),
                       opt_state=split(state.opt_state),
                       extra_emas=tuple(split(e) for e in state.extra_emas),
                       aux=jax.tree.map(lambda _: rep, state.aux))  # a family's small extras


def with_sharding(abstract, shardings):
  """ShapeDtypeStructs that carry shardings: orbax restores straight into that layout."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def global_batch(local: dict, mesh: Mesh) -> dict:
  """This host's rows -> global arrays split along 'data' (every host passes its own slice)."""
  sharding = batch_sharding(mesh)
  n_proc = jax.process_count()

  def one(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * n_proc,) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)
  return {k: one(v) for k, v in local.items()}


def check_batch(batch_size: int, grad_accum: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if batch_size % (n * grad_accum):
    raise JaxdiffError(f"training.batch_size={batch_size} is not divisible by devices x grad_accum "
                       f"= {n} x {grad_accum}; choose a batch size that is")
