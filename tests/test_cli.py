"""The command line's error paths: one line on stderr, a non-zero exit, nothing deleted."""

import numpy as np
import pytest

from conftest import DIGITS, TINY, run_cli, run_main


def _one_line_error(code, err, *needles):
  assert code == 2, err
  lines = [l for l in err.strip().splitlines() if l.startswith("jaxdiff")]
  assert len(lines) == 1 and "error:" in lines[0], err
  assert "Traceback" not in err
  for n in needles:
    assert n in lines[0], lines[0]


def test_missing_config_file(tmp_path):
  code, _, err = run_cli("train", "--config", "configs/nope.py", "--workdir", str(tmp_path / "w"))
  _one_line_error(code, err, "configs/nope.py", "does not exist")
  assert not (tmp_path / "w").exists()


def test_unknown_config_key(tmp_path, capsys):
  code, _, err = run_main(capsys, "train", "--config", DIGITS, "--workdir", str(tmp_path / "w"),
                          "--config.training.stepz=5")
  _one_line_error(code, err, "training.stepz", "training.steps")
  assert not (tmp_path / "w").exists()


def test_unwritable_workdir(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("x")  # a workdir below a regular file cannot be created, even as root
  code, _, err = run_main(capsys, "train", "--config", DIGITS, "--workdir", str(blocker / "w"))
  _one_line_error(code, err, "cannot write to workdir")
  assert blocker.read_text() == "x"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny digits run made once through the CLI (in this process), shared by the tests below."""
  workdir = tmp_path_factory.mktemp("run") / "w"
  from jaxdiff.cli import main
  assert main(["train", "--config", DIGITS, "--workdir", str(workdir), *TINY,
               "--config.training.steps=2"]) == 0
  return workdir


def test_other_config_in_workdir_refused(trained, capsys):
  before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
  code, _, err = run_main(capsys, "train", "--config", DIGITS, "--workdir", str(trained), *TINY,
                          "--config.model.model_channels=16")
  _one_line_error(code, err, "another config", "model.model_channels")
  assert sorted(p.relative_to(trained) for p in trained.rglob("*")) == before


def test_sample_writes_npz_and_grid_deterministically(trained, tmp_path, capsys):
  a, b, png = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "g.png"
  for out in (a, b):
    code, _, err = run_main(capsys, "sample", "--workdir", str(trained), "--num", "12", "--out",
                            str(out),
                            "--seed", "5", "--steps", "3", "--grid", str(png))
    assert code == 0, err
  da, db = np.load(a), np.load(b)
  assert da["images"].dtype == np.uint8 and da["images"].shape == (12, 8, 8, 1)
  assert da["labels"].dtype == np.int32
  np.testing.assert_array_equal(da["labels"], np.arange(12) % 10)
  np.testing.assert_array_equal(da["images"], db["images"])
  assert png.stat().st_size > 0


def test_sample_errors(trained, tmp_path, capsys):
  code, _, err = run_main(capsys, "sample", "--workdir", str(tmp_path / "none"), "--num", "2",
                          "--out", str(tmp_path / "x.npz"))
  _one_line_error(code, err, "no jaxdiff run")
  code, _, err = run_main(capsys, "sample", "--workdir", str(trained), "--num", "2", "--out",
                          str(tmp_path / "x.npz"), "--label", "11")
  _one_line_error(code, err, "--label 11")
  code, _, err = run_main(capsys, "sample", "--workdir", str(trained), "--num", "2", "--out",
                          str(tmp_path / "x.npz"), "--solver", "nosuch")
  _one_line_error(code, err, "nosuch")
  assert not (tmp_path / "x.npz").exists()


def test_info_json(capsys):
  import json
  code, out, err = run_main(capsys, "info", "--config", DIGITS, "--json", *TINY)
  assert code == 0, err
  info = json.loads(out)
  assert isinstance(info["params"], int) and info["params"] > 0
  assert info["gflops_per_forward"] > 0
  assert sum(info["params_by_part"].values()) == info["params"]
