"""bench/fewstep.py (the digits NFE frontier): its plan (--dry-run), bookkeeping and plot, without
training or sampling anything."""

import importlib.util
import json
import os

import pytest

from conftest import ROOT


def _module():
  path = os.path.join(ROOT, "bench", "fewstep.py")
  spec = importlib.util.spec_from_file_location("_bench_fewstep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_dry_run_plans_four_trainings_and_every_cell(tmp_path, capsys):
  fs = _module()
  assert fs.main(["--dry-run", "--root", str(tmp_path), "--teacher-steps", "7", "--cm-steps", "5"]) == 0
  plan = json.loads(capsys.readouterr().out)
  runs = {r["name"]: r for r in plan["trainings"]}
  assert list(runs) == ["teacher", "ct", "tune", "distill"]
  assert runs["teacher"]["family"] == "plain"
  assert {runs[m]["family"] for m in ("ct", "tune", "distill")} == {"consistency"}
  teacher = os.path.join(str(tmp_path), "teacher")
  assert f"--config.consistency.init_from={teacher}" in runs["tune"]["overrides"]
  assert f"--config.consistency.teacher={teacher}" in runs["distill"]["overrides"]
  assert "--config.training.steps=5" in runs["ct"]["overrides"]
  assert not os.listdir(tmp_path)  # nothing trained
  cells = plan["cells"]
  teacher_cells = [c for c in cells if c["model"] == "teacher"]
  # Per solver and grid: one cell per distinct step count; Heun's NFE are 2K − 1.
  heun = sorted({(c["steps"], c["nfe"]) for c in teacher_cells if c["solver"] == "heun"})
  assert heun == [(1, 1), (2, 3), (4, 7), (8, 15), (18, 35)]
  ipndm = sorted(c["nfe"] for c in teacher_cells if c["solver"] == "ipndm" and c["grid"] == "gits")
  assert ipndm == [1, 2, 4, 8, 16, 35]
  assert len(teacher_cells) == 2 * 4 * 6 + 5  # heun on the EDM grid only
  cm = [(c["model"], c["nfe"]) for c in cells if c["solver"] == "consistency"]
  assert cm == [(m, n) for m in ("ct", "tune", "distill") for n in (1, 2, 4)]


def test_training_images_and_best_solver_per_nfe():
  fs = _module()
  imgs = fs.training_images({"teacher": dict(steps=10, batch_size=64), "ct": dict(steps=3, batch_size=8),
                             "tune": dict(steps=2, batch_size=8), "distill": dict(steps=1, batch_size=8)})
  assert imgs == {"teacher": 640, "ct": 24, "tune": 656, "distill": 648}
  rows = [dict(model="teacher", grid="edm", nfe=n, solver=s, svc_accuracy=a, fdd=f)
          for s, a, f, n in (("heun", 0.5, 3.0, 4), ("ipndm", 0.8, 2.0, 4), ("unipc", 0.7, 1.0, 4),
                             ("heun", 0.9, 0.1, 3))]
  assert fs.best_per_nfe(rows)[("teacher", "edm")][4]["solver"] == "unipc"  # lowest FDD
  assert fs.best_per_nfe(rows, by="svc_accuracy")[("teacher", "edm")][4]["solver"] == "ipndm"
  assert 3 not in fs.best_per_nfe(rows)[("teacher", "edm")]  # Heun's 3 NFE is not a budget


def test_plot_writes_a_png(tmp_path):
  fs = _module()
  rows = [dict(model=m, grid=g, nfe=n, solver="x", svc_accuracy=0.5 + n / 100, fdd=10.0 / n)
          for m, g in (("teacher", "edm"), ("teacher", "gits"), ("ct", "config")) for n in (1, 2, 4)]
  path = str(tmp_path / "f.png")
  fs.plot(dict(results=rows, num=10), path)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
