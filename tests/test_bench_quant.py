"""bench/quant_digits.py (issue 14's table): the plan (--dry-run) and one --tiny run of every
step on tiny random networks."""

import importlib.util
import json
import os

import pytest

from conftest import ROOT


def _module():
  path = os.path.join(ROOT, "bench", "quant_digits.py")
  spec = importlib.util.spec_from_file_location("_bench_quant_digits", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_dry_run_plans_every_variant_and_the_group_sizes(tmp_path, capsys):
  qd = _module()
  out = tmp_path / "r.json"
  assert qd.main(["--dry-run", "--tiny", "--out", str(out), "--table", str(tmp_path / "r.md"),
                  "--plot", str(tmp_path / "r.png")]) == 0
  plan = json.loads(capsys.readouterr().out)
  assert plan["variants"] == ["f32", "W8", "W4", "W4g64", "W8A8"]
  # The tiny digits net (20 channels) has 80-wide embedding layers: 64 does not divide 80, the
  # largest G <= 64 dividing every wider layer's input (80) is 40.
  assert plan["networks"]["digits"]["group_size"] == 40
  assert plan["networks"]["cifar10_ddpmpp"]["solver"] == "heun"
  assert not out.exists() and not os.listdir(tmp_path)


def test_group_size_falls_back_to_a_common_divisor():
  """configs/digits.py has layers of 96 input channels: 64 does not divide them, 32 does; the
  DDPM++ CIFAR-10 widths (128 ... 512, and 3 / 9 inputs) take 64."""
  from jaxdiff import build, families
  from jaxdiff.config import load_config
  qd = _module()
  for cfg, want in (("configs/digits.py", 32), ("configs/cifar10_ddpmpp.py", 64)):
    exp = build.experiment(load_config(os.path.join(ROOT, cfg), []))
    assert qd.group_size_for(families.abstract_network(exp)[1], 64) == want, cfg


def test_missing_checkpoint_refused(tmp_path):
  from jaxdiff.errors import JaxdiffError
  qd = _module()
  (tmp_path / "w").mkdir()
  with pytest.raises(JaxdiffError):
    qd.main(["--dry-run", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "r.json"),
             "--table", str(tmp_path / "r.md"), "--plot", str(tmp_path / "r.png")])


@pytest.mark.slow
def test_tiny_run_writes_json_table_and_plot(tmp_path):
  qd = _module()
  out, md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
  assert qd.main(["--tiny", "--root", str(tmp_path / "root"), "--out", str(out), "--table",
                  str(md), "--plot", str(png)]) == 0
  result = json.loads(out.read_text())
  for net in ("digits", "cifar10_ddpmpp"):
    rows = {r["variant"]: r for r in result[net]["rows"]}
    assert list(rows) == ["f32", "W8", "W4", "W4g64", "W8A8"]
    for name in ("W8", "W4", "W4g64", "W8A8"):
      err = rows[name]["rel_error"]
      assert len(err) == len(qd.SIGMAS) and all(e > 0 for e in err.values()), (net, name)
      assert rows[name]["drift_pixels"] >= 0 and rows[name]["images_per_s"] > 0
    # Fewer bits, smaller parameters and larger errors (mean over σ).
    mean = {n: sum(rows[n]["rel_error"].values()) / len(qd.SIGMAS) for n in ("W8", "W4")}
    assert mean["W8"] < mean["W4"], (net, mean)
    assert rows["W4"]["param_bytes"] < rows["W8"]["param_bytes"] < rows["f32"]["param_bytes"]
  assert 0 <= result["digits"]["rows"][0]["svc_accuracy"] <= 1
  assert result["student"]["param_ratio"] <= 0.25 and result["student"]["speed_ratio"] > 0
  assert "| W8A8 |" in md.read_text() and "### student" in md.read_text()
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
