"""Exact resume: killed (SIGKILL) or preempted (SIGTERM) runs continue to the same weights and
samples as an uninterrupted run; a corrupt newest checkpoint is skipped, never loaded."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

import jaxdiff
from conftest import DIGITS, ROOT, TINY
from jaxdiff.config import load_config
from jaxdiff.errors import JaxdiffError
from jaxdiff.build import run_training as train

# 20 steps, checkpoints every 5. (Saves were ~0.85 s each before the packed layout, ~0.07 s now:
# docs/bench.md, 2026-12-03 evening.)
STEPS = 20
OVERRIDES = TINY + [f"--config.training.steps={STEPS}", "--config.training.checkpoint_every=5",
                    "--config.training.log_every=5", "--config.training.keep_checkpoints=3"]


def _final(workdir):
  model = jaxdiff.load(workdir)
  return model.params, model.sample(4, seed=1, steps=2)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run's final params and samples: one run for both signals (the file runs
  on one xdist worker)."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  train(load_config(DIGITS, OVERRIDES), workdir)
  return _final(workdir)


def _steps_saved(workdir):
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _interrupt(workdir, sig, at_step=10):
  """Starts `jaxdiff train` for 20 steps and sends `sig` once checkpoint `at_step` is complete."""
  proc = subprocess.Popen([sys.executable, "-m", "jaxdiff", "train", "--config", DIGITS,
                           "--workdir", workdir, "--json", *OVERRIDES], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if any(s >= at_step for s in _steps_saved(workdir)):
      proc.send_signal(sig)
      break
    time.sleep(0.01)
  out, err = proc.communicate(timeout=600)
  return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_run_resumes_exactly(tmp_path, sig, straight):
  workdir = str(tmp_path / "interrupted")
  code, out, err = _interrupt(workdir, sig)
  if sig == signal.SIGTERM:
    assert code == 0, err[-2000:]                         # a clean exit after saving
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["preempted"] and summary["steps"] < STEPS
    assert summary["steps"] in _steps_saved(workdir)      # saved where it stopped
  else:
    assert code == -signal.SIGKILL
  resumed = train(load_config(DIGITS, OVERRIDES), workdir)
  assert 10 <= resumed["start_step"] < STEPS and resumed["steps"] == STEPS
  params_b, samples_b = _final(workdir)
  params_a, samples_a = straight
  chex.assert_trees_all_equal(params_a, params_b)
  np.testing.assert_array_equal(samples_a, samples_b)


def _garble(directory):
  for root, _, files in os.walk(directory):
    for f in files:
      path = os.path.join(root, f)
      size = os.path.getsize(path)
      with open(path, "wb") as fh:
        fh.write(np.random.default_rng(0).bytes(max(size, 16)))


@pytest.mark.slow
def test_corrupt_latest_checkpoint_is_skipped(tmp_path, capfd):
  short = OVERRIDES + ["--config.training.steps=10"]
  cfg = load_config(DIGITS, short)
  workdir = str(tmp_path / "run")
  train(cfg, workdir)
  assert _steps_saved(workdir) == [5, 10]
  _garble(os.path.join(workdir, "checkpoints", "10", "state"))
  capfd.readouterr()
  summary = train(cfg, workdir)                          # falls back to step 5, redoes 6..10
  err = capfd.readouterr().err
  assert "checkpoint 10" in err and "skipping it" in err
  assert summary["start_step"] == 5 and summary["steps"] == 10
  assert os.listdir(os.path.join(workdir, "checkpoints_corrupt")) == ["10"]
  straight = str(tmp_path / "straight")
  train(cfg, straight)
  chex.assert_trees_all_equal(jaxdiff.load(workdir).params, jaxdiff.load(straight).params)

  # Bytes that still decode but differ from what was saved: caught by the recorded checksum.
  meta_path = os.path.join(workdir, "checkpoints", "10", "meta", "metadata")
  with open(meta_path) as f:
    meta = json.load(f)
  meta["checksum"][0] *= 1.01
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  model = jaxdiff.load(workdir)                          # reads step 5 instead, with a warning
  assert "checkpoint 10" in capfd.readouterr().err
  assert not jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), model.params,
                                       jaxdiff.load(straight).params))


def test_no_readable_checkpoint_is_an_error(tmp_path):
  cfg = load_config(DIGITS, TINY + ["--config.training.steps=2"])
  workdir = str(tmp_path / "run")
  train(cfg, workdir)
  _garble(os.path.join(workdir, "checkpoints", "2", "state"))
  with pytest.raises(JaxdiffError, match="cannot be read|no readable checkpoint"):
    train(load_config(DIGITS, TINY), workdir)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))  # nothing moved or deleted
