"""The train step over a device mesh: 1 device and 4 fake CPU devices give the same run."""

import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import DIGITS, ROOT, TINY, fake_devices_env
from jaxdiff.train.sharding import fsdp_spec, wants_distributed

# Trains the tiny digits config through the real loop, then samples its EMA; run in a subprocess
# because the device count is fixed when JAX starts. argv: config, then runs "WORKDIR|OUT|EXTRA"
# (EXTRA: overrides joined by ";"), each after the previous one in the same process.
_WORKER = r"""
import sys
import numpy as np
import jax
from jaxdiff.config import load_config
from jaxdiff.build import run_training as train
import jaxdiff
cfg_path, *runs = sys.argv[1:]
for run in runs:
  workdir, out, extra = run.split("|")
  summary = train(load_config(cfg_path, [o for o in extra.split(";") if o]), workdir)
  model = jaxdiff.load(workdir)
  images = model.sample(4, seed=3, steps=2)
  np.savez(out, images=images, losses=np.array([l for _, l in summary["loss_history"]]),
           devices=jax.device_count(),
           params=np.concatenate([np.ravel(x) for x in jax.tree.leaves(model.params)]))
"""


def _run(tmp_path, devices, runs):
  """Runs {name: extra overrides} one after the other in one process on `devices` devices."""
  env = fake_devices_env(devices)
  overrides = TINY + ["--config.training.steps=3", "--config.training.checkpoint_every=3"]
  argv = [f"{tmp_path / name}|{tmp_path / name}.npz|{';'.join([*overrides, *extra])}"
          for name, extra in runs.items()]
  proc = subprocess.run([sys.executable, "-c", _WORKER, DIGITS, *argv], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [np.load(tmp_path / f"{name}.npz") for name in runs]


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


@pytest.mark.slow
def test_one_and_four_devices_agree(tmp_path):
  one, = _run(tmp_path, 1, {"one": []})
  four, fsdp = _run(tmp_path, 4, {"four": [], "fsdp": ["--config.training.fsdp=True"]})
  assert int(one["devices"]) == 1 and int(four["devices"]) == int(fsdp["devices"]) == 4
  assert len(one["losses"]) == 3
  for other in (four, fsdp):
    np.testing.assert_allclose(other["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(other["params"], one["params"], rtol=1e-4, atol=1e-6)
    # uint8 samples: at most a rounding step apart where float sums were reordered.
    diff = np.abs(other["images"].astype(int) - one["images"].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
