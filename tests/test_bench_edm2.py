"""bench/edm2_digits.py without training: the runs it would train, its table from given cells."""

import importlib.util
import os

from conftest import ROOT


def _bench():
  spec = importlib.util.spec_from_file_location("edm2_digits",
                                                os.path.join(ROOT, "bench", "edm2_digits.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_dry_run_lists_the_trainings_and_creates_nothing(tmp_path, capsys):
  bench = _bench()
  assert bench.main(["--root", str(tmp_path), "--dry-run", "--seeds", "0", "1"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  names = [line.split("--workdir ")[1].split()[0] for line in lines]
  assert [os.path.basename(n) for n in names] == ["base-s0", "edm2-s0", "base-s1", "edm2-s1",
                                                  "edm2xs-s0", "edm2unc-s0"]
  assert "--config.data.num_classes=0" in lines[-1] and "--config.training.steps=400" in lines[-2]
  assert not list(tmp_path.iterdir())


def test_table_means_and_best_choices():
  bench = _bench()
  cell = lambda fdd, acc, **kw: dict(fdd=fdd, accuracy=acc, **kw)  # noqa: E731
  recipe = [cell(fdd, acc, recipe=r, seed=s, steps=n) for r, s, n, fdd, acc in (
      ("edm", 0, 10, 1.0, 0.9), ("edm", 1, 10, 3.0, 0.7), ("edm", 0, 20, 2.0, 0.8),
      ("edm", 1, 20, 2.0, 0.8), ("edm2", 0, 10, 0.5, 0.9), ("edm2", 1, 10, 0.5, 0.9),
      ("edm2", 0, 20, 0.4, 0.9), ("edm2", 1, 20, 0.4, 0.9))]
  res = dict(num=10, sample_seed=0, real_accuracy=0.99, recipe=recipe,
      phema=[cell(0.3, 0.9, seed=0, std=0.1, profile_error=0.0),
             cell(0.5, 0.9, seed=0, std=0.2, profile_error=0.01),
             dict(seed=0, std=0.02, refused="cannot be reconstructed")],
      guidance=[cell(0.2, 1.0, kind="autoguidance", seed=0, weight=1.5),
                cell(0.9, 1.0, kind="autoguidance", seed=0, weight=2.0),
                cell(0.6, 1.0, kind="cfg", seed=0, weight=1.5),
                cell(0.1, 1.0, kind="cfg", seed=0, weight=2.0)])
  res["best_std"] = bench._best([r for r in res["phema"] if "fdd" in r], "std")
  res["best_weight"] = {k: bench._best([r for r in res["guidance"] if r["kind"] == k], "weight")
                        for k in bench.GUIDES}
  assert res["best_std"] == 0.1 and res["best_weight"] == {"autoguidance": 1.5, "cfg": 2.0}
  text = bench.table(res)
  assert ("| EDM recipe (configs/digits.py) | ipndm 10 steps (10) | 0.800 ± 0.100 | 2.000 ± 1.000 |"
          in text)
  assert "| 0.02 | refused | | |" in text
  assert "| cfg | 2 | 1.000 ± 0.000 | 0.100 ± 0.000 |" in text
