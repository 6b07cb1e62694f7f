"""bench/adversarial_digits.py: its plan (--dry-run) and, on tiny settings, the whole experiment
end to end (a base, a discriminator, DG sampling, fine-tuning and its control, scores, outputs)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from conftest import DIGITS, ROOT, TINY


def _module():
  path = os.path.join(ROOT, "bench", "adversarial_digits.py")
  spec = importlib.util.spec_from_file_location("_bench_adversarial", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  from jaxdiff.build import run_training
  from jaxdiff.config import load_config
  workdir = str(tmp_path_factory.mktemp("advbench") / "base")
  run_training(load_config(DIGITS, TINY + ["--config.training.steps=2"]), workdir)
  return workdir


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, capsys, base):
  bench = _module()
  root = str(tmp_path / "root")
  assert bench.main(["--root", root, "--base", base, "--dry-run", "--dg-weights", "1", "2"]) == 0
  cmds = capsys.readouterr().out.strip().splitlines()
  # gen, base, then per seed: disc + 2 DG samples; per seed: adversarial + plain, each + sample
  assert len(cmds) == 2 + 3 * 3 + 3 * 4
  assert sum("digits_discriminator.py" in c for c in cmds) == 3
  adv = [c for c in cmds if "digits_adversarial.py" in c]
  assert sum("--config.adversarial.weight=0 " in c for c in adv) == 3   # the plain controls
  # the base's network (TINY's model overrides) is passed to the fine-tunings
  assert all("--config.model.model_channels=8" in c for c in adv)
  assert all("--dg-weight" in c for c in cmds if "--discriminator" in c)
  assert not os.path.exists(root)


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path, base):
  bench = _module()
  root = str(tmp_path / "root")
  out, md, png = (str(tmp_path / f) for f in ("r.json", "r.md", "r.png"))
  assert bench.main(["--root", root, "--base", base, "--tiny", "--out", out, "--table", md,
                     "--plot", png]) == 0
  with open(out) as f:
    summary = json.load(f)
  models = sorted(r["model"] for r in summary["rows"])
  assert models == ["adversarial", "base", "base+dg", "plain"]
  for c in summary["cells"]:
    assert 0 <= c["svc"] <= 1 and 0 <= c["accuracy"] <= 1 and np.isfinite(c["fdd"]), c
    assert c["nfe"] == 3 and c["num"] == 20
  assert summary["dg_weights"] == [0.5] and summary["seeds"] == [0]
  ft = [c for c in summary["cells"] if c["group"] == "finetune"]
  assert {c["extra_images"] for c in ft} == {2 * 16}   # equal extra training images
  assert "| finetune | adversarial |" in open(md).read()
  assert os.path.getsize(png) > 1000
  print("tiny run seconds per command:", summary["seconds"])
