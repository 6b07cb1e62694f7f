"""The mesh helpers: FSDP partition specs and when to start jax.distributed. That the train step on
1 device and on 4 fake CPU devices (replicated or FSDP) gives the same run is checked in
test_portability.py, with the processes that test starts anyway."""

from jax.sharding import PartitionSpec as P

from jaxdiff.train.sharding import fsdp_spec, wants_distributed


def test_fsdp_spec_picks_largest_divisible_axis():
  assert fsdp_spec((3, 3, 8, 16), 4) == P(None, None, None, "data")
  assert fsdp_spec((16, 8), 4) == P("data")
  assert fsdp_spec((16, 16), 4) == P(None, "data")        # tie: the later axis
  assert fsdp_spec((3, 5), 4) == P()                      # nothing divides: replicated
  assert fsdp_spec((2,), 4) == P()                        # smaller than the mesh
  assert fsdp_spec((64, 8), 1) == P()


def test_distributed_auto_reads_env(monkeypatch):
  for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS",
            "OMPI_COMM_WORLD_SIZE", "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(k, raising=False)
  assert not wants_distributed("auto")
  assert wants_distributed(True) and not wants_distributed(False)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  assert wants_distributed("auto")
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert not wants_distributed("auto")
