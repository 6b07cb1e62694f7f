"""Time to quality of the README's main job under other recipes (issue 16).

Each recipe is configs/digits.py with `--config.KEY=VALUE` overrides. For each, in turn (one
CPU-heavy job at a time): `jaxdiff train` into ROOT/NAME, `jaxdiff sample --num 1000` (seed 0), the
independent SVC accuracy (bench/digits_quality.py) and `jaxdiff eval --metric fdd,accuracy`; the
wall seconds of train and sample are timed around the subprocesses. A workdir that already holds a
finished run is resumed (nothing to train), so its train seconds then mean nothing.

Usage: python bench/digits_recipe.py --root DIR [--only NAME ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# name -> overrides of configs/digits.py (batch 64, lr 2e-3 after a 20k-image ramp, EMA half-life
# min(50k, 0.05 x images seen) images). At these lengths the EMA's ramp-up decides its half-life
# (0.05 x 102k images = 5.1k < 50k), so ema_halflife_images changes nothing below ~1M images;
# ema_rampup_ratio is the EMA's knob here. s1600 is the default before issue 16, s1200 today's.
_S = lambda n: [f"--config.training.steps={n}", f"--config.training.checkpoint_every={n // 2}",
                f"--config.training.sample_every={n}"]  # noqa: E731
RECIPES = {
    "s1600": _S(1600),
    "s1000": _S(1000),
    "s1200": _S(1200),
    "s1200_seed1": _S(1200) + ["--config.training.seed=1"],
    "s1200_r10": _S(1200) + ["--config.training.ema_rampup_ratio=0.1"],
    "s1200_lr3": _S(1200) + ["--config.training.lr=3e-3"],
}


def _timed(cmd, log):
  t = time.time()
  with open(log, "w") as f:
    subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
  return time.time() - t


def run(root: str, name: str, overrides: list[str]) -> dict:
  wd = os.path.join(root, name)
  os.makedirs(root, exist_ok=True)
  py = [sys.executable, "-m", "jaxdiff"]
  train_s = _timed(py + ["train", "--config", "configs/digits.py", "--workdir", wd, *overrides],
                   wd + ".train.log")
  out = wd + ".npz"
  sample_s = _timed(py + ["sample", "--workdir", wd, "--num", "1000", "--out", out],
                    wd + ".sample.log")
  svc = json.loads(subprocess.run([sys.executable, "bench/digits_quality.py", out, "--json"],
                                  check=True, capture_output=True, text=True).stdout
                   .strip().splitlines()[-1])
  ev = json.loads(subprocess.run(py + ["eval", "--samples", out, "--metric", "fdd,accuracy",
                                       "--json"], check=True, capture_output=True, text=True)
                  .stdout.strip().splitlines()[-1])
  return {"name": name, "overrides": overrides, "train_s": round(train_s, 1),
          "sample_s": round(sample_s, 1), "svc": svc["sample_accuracy"],
          "fdd": round(ev["fdd"], 3), "accuracy": ev["accuracy"],
          "load_after": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--root", required=True)
  p.add_argument("--only", nargs="*", choices=sorted(RECIPES))
  p.add_argument("--json")
  a = p.parse_args(argv)
  os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  rows = []
  for name in a.only or RECIPES:
    rows.append(run(a.root, name, RECIPES[name]))
    print(json.dumps(rows[-1]), flush=True)
    if a.json:
      with open(a.json, "w") as f:
        json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
