"""Runs over device counts: the train step on 1 device and on 4 (fake CPU) devices, replicated or
FSDP, gives the same run; checkpoints move between device counts: a run written on 4 devices
samples on 1 and 2 devices through `jaxdiff.load`, `jaxdiff sample` and `jaxdiff eval --workdir`
with the same images as on 4; a run started on 1 device resumes on 4, and one started on 4 resumes
on 1.

Each phase runs in its own process because the device count is fixed when JAX starts. One module
fixture runs the four processes for both tests (the 1-vs-4-device check was test_sharding.py's
own two processes and three trainings; sharing saves two interpreter starts and one training).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DIGITS, ROOT, TINY, fake_devices_env

OVERRIDES = TINY + ["--config.training.checkpoint_every=2"]  # 4 steps, checkpoints at 2 and 4

# argv: devices, then actions "train:WORKDIR:STEPS[:fsdp]" (writes WORKDIR.losses.npy),
# "load:WORKDIR:OUT", "cli:WORKDIR:OUTDIR".
_WORKER = r"""
import sys
import numpy as np
import jax
want, actions, cfg_path, overrides = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4:]
assert jax.device_count() == want, (jax.device_count(), want)
import jaxdiff
from jaxdiff.cli import main
from jaxdiff.config import load_config
from jaxdiff.build import run_training as train
for action in actions:
  kind, workdir, arg, *flags = action.split(":")
  if kind == "train":
    extra = ["--config.training.fsdp=True"] if flags == ["fsdp"] else []
    summary = train(load_config(cfg_path, overrides + [f"--config.training.steps={arg}", *extra]),
                    workdir)
    assert summary["devices"] == want
    np.save(workdir + ".losses.npy", np.array([l for _, l in summary["loss_history"]]))
  elif kind == "load":
    model = jaxdiff.load(workdir)
    np.savez(arg, images=model.sample(4, seed=3, steps=2), devices=jax.device_count(),
             params=np.concatenate([np.ravel(x) for x in jax.tree.leaves(model.params)]),
             raw=np.concatenate([np.ravel(x) for x in jax.tree.leaves(
                 jaxdiff.load(workdir, ema=False).params)]))
  elif kind == "cli":
    assert main(["sample", "--workdir", workdir, "--num", "4", "--seed", "3", "--steps", "2",
                 "--out", f"{arg}/sample.npz"]) == 0
    assert main(["eval", "--workdir", workdir, "--num", "4", "--seed", "3", "--metric",
                 "accuracy", "--samples", f"{arg}/eval.npz"]) == 0
"""


def _run(devices, *actions):
  env = fake_devices_env(devices)
  proc = subprocess.run([sys.executable, "-c", _WORKER, str(devices), ",".join(actions), DIGITS,
                         *OVERRIDES], env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _close(a, b):
  """Runs on different device counts agree to float round-off (sums are reordered)."""
  np.testing.assert_allclose(a["params"], b["params"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(a["raw"], b["raw"], rtol=1e-4, atol=1e-6)
  diff = np.abs(a["images"].astype(int) - b["images"].astype(int))
  assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The four processes; returns their folder and the stderr of the 1-device resume."""
  tmp_path = tmp_path_factory.mktemp("devices")
  w4, up, down, one, fsdp = (str(tmp_path / n) for n in ("four", "one_then_four", "four_then_one",
                                                          "one", "fsdp"))
  for n in (1, 2, 4):
    os.makedirs(tmp_path / f"cli{n}")
  # one: 4 steps on 1 device; up: 2 steps on 1 device (resumed on 4 below); w4: 4 steps on 4;
  # fsdp: 4 steps on 4, parameters sharded; down: 2 steps on 4.
  _run(1, f"train:{one}:4", f"load:{one}:{tmp_path}/one.npz", f"train:{up}:2")
  _run(4, f"train:{w4}:4", f"load:{w4}:{tmp_path}/w4_on4.npz", f"cli:{w4}:{tmp_path / 'cli4'}",
       f"train:{fsdp}:4:fsdp", f"load:{fsdp}:{tmp_path}/fsdp.npz",
       f"train:{up}:4", f"load:{up}:{tmp_path}/up.npz", f"train:{down}:2")
  proc = _run(1, f"load:{w4}:{tmp_path}/w4_on1.npz", f"cli:{w4}:{tmp_path / 'cli1'}",
              f"train:{down}:4", f"load:{down}:{tmp_path}/down.npz")
  _run(2, f"load:{w4}:{tmp_path}/w4_on2.npz", f"cli:{w4}:{tmp_path / 'cli2'}")
  return tmp_path, proc.stderr


@pytest.mark.slow
def test_one_and_four_devices_agree(runs):
  tmp_path, _ = runs
  one = np.load(tmp_path / "one.npz")
  assert int(one["devices"]) == 1
  one_losses = np.load(tmp_path / "one.losses.npy")
  assert len(one_losses) == 4
  for name, run in (("four", "w4_on4"), ("fsdp", "fsdp")):
    other = np.load(tmp_path / f"{run}.npz")
    assert int(other["devices"]) == 4
    np.testing.assert_allclose(np.load(tmp_path / f"{name}.losses.npy"), one_losses, rtol=1e-5)
    _close(other, one)


@pytest.mark.slow
def test_checkpoints_move_between_device_counts(runs):
  tmp_path, stderr = runs
  assert "Topology mismatch" not in stderr
  assert "resuming" in stderr and "from step 2" in stderr

  on4 = np.load(tmp_path / "w4_on4.npz")
  assert int(on4["devices"]) == 4
  for n in (1, 2):
    other = np.load(tmp_path / f"w4_on{n}.npz")
    assert int(other["devices"]) == n
    # The same bytes restored: identical weights, and (one device samples) identical images.
    np.testing.assert_array_equal(other["params"], on4["params"])
    np.testing.assert_array_equal(other["raw"], on4["raw"])
    np.testing.assert_array_equal(other["images"], on4["images"])
    for name in ("sample", "eval"):
      a = np.load(tmp_path / f"cli{n}" / f"{name}.npz")
      b = np.load(tmp_path / "cli4" / f"{name}.npz")
      np.testing.assert_array_equal(a["images"], b["images"])
      np.testing.assert_array_equal(a["labels"], b["labels"])
  np.testing.assert_array_equal(np.load(tmp_path / "cli4" / "sample.npz")["images"],
                                on4["images"])
  # Resumed across device counts: the uninterrupted 4-step run's weights and samples.
  _close(np.load(tmp_path / "up.npz"), on4)
  _close(np.load(tmp_path / "down.npz"), on4)
