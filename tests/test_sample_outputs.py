"""`jaxdiff train` logs sample grids to TensorBoard; `jaxdiff sample` refuses unwritable outputs
before sampling and never leaves a partial file."""

import io

import numpy as np
import pytest

from conftest import DIGITS, TINY, run_main
from test_cli import _one_line_error
from test_images import _read_events


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run") / "w"
  from jaxdiff.cli import main
  assert main(["train", "--config", DIGITS, "--workdir", str(workdir), *TINY,
               "--config.training.steps=2", "--config.training.sample_every=2",
               "--config.training.sample_grid=12"]) == 0
  return workdir


@pytest.mark.slow
def test_train_logs_sample_grid_beside_scalars(trained):
  from PIL import Image
  events = _read_events(trained / "tensorboard")
  tags = {t for t, _, _ in events}
  assert {"train/loss", "train/grad_norm", "train/images_per_s", "samples"} <= tags, tags
  (_, step, v), = [e for e in events if e[0] == "samples"]
  assert step == 2
  tb = np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)))
  png = np.asarray(Image.open(trained / "samples_latest.png"))  # the grid the loop wrote
  assert tb.shape == png.shape + (3,)
  np.testing.assert_array_equal(tb[..., 0], png)
  # 12 digits in 4 columns of 32 px with 2 px gutters: 3 rows
  assert png.shape == (3 * 32 + 2 * 2, 4 * 32 + 3 * 2)


@pytest.mark.slow
def test_sample_grid_has_one_class_per_column(trained, tmp_path, capsys):
  code, _, err = run_main(capsys, "sample", "--workdir", str(trained), "--num", "20", "--out",
                          str(tmp_path / "s.npz"), "--grid", str(tmp_path / "g.png"))
  assert code == 0, err
  from PIL import Image
  g = np.asarray(Image.open(tmp_path / "g.png"))
  assert g.shape == (2 * 32 + 2, 10 * 32 + 9 * 2)  # 10 columns: labels cycle 0..9
  images = np.load(tmp_path / "s.npz")["images"]
  np.testing.assert_array_equal(g[34:66, 34:66], images[11, :, :, 0].repeat(4, 0).repeat(4, 1))
  assert "sampling" in err, err  # the progress bar, on stderr


@pytest.mark.parametrize("flag", ["--out", "--grid"])
def test_sample_unwritable_output(tmp_path, flag, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  bad = str(blocker / ("s.npz" if flag == "--out" else "g.png"))
  out = bad if flag == "--out" else str(tmp_path / "s.npz")
  # The workdir does not exist either: the output check comes first, before loading or sampling.
  args = ["sample", "--workdir", str(tmp_path / "nowhere"), "--num", "2", "--out", out]
  if flag == "--grid":
    args += ["--grid", bad]
  code, _, err = run_main(capsys, *args)
  _one_line_error(code, err, flag, bad)
  assert "sampling" not in err and "no jaxdiff run" not in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written, no temp files
  assert blocker.read_text() == "x"


def test_sample_read_only_folder(tmp_path, capsys):
  import os
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  try:
    if os.access(str(ro), os.W_OK):
      pytest.skip("running as root: a read-only folder is writable (the path-under-a-file case "
                  "covers an unwritable path)")
    code, _, err = run_main(capsys, "sample", "--workdir", str(tmp_path / "nowhere"), "--num", "2",
                            "--out", str(ro / "s.npz"))
    _one_line_error(code, err, "--out", str(ro / "s.npz"), "not writable")
    assert list(ro.iterdir()) == []
  finally:
    ro.chmod(0o755)
