"""bench/plots.py: the table parser on hand-made markdown, and every docs picture is made and linked."""

import os
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import plots  # noqa: E402

MD = """
intro text
gmm2d (d=2, 8 components), n=20: noise floor 0.5 ± 0.25, Heun-256 (same latents) 0.6

| NFE budget | euler | heun |
|---|---|---|
| 5 | 0.40 | 2.3 |
| 6 | **0.28** | 2.3 (5) |

| variant | train GFLOPs | accuracy |
| --- | --- | --- |
| unified | 227 | 0.763 ± 0.022 |
| multi-stage, equal-t | 1,454 | **0.886 ± 0.007** |
"""


def test_tables_and_numbers():
  ts = plots.tables(MD)
  assert [t["header"] for t in ts] == [["NFE budget", "euler", "heun"],
                                       ["variant", "train GFLOPs", "accuracy"]]
  assert ts[0]["rows"] == [["5", "0.40", "2.3"], ["6", "**0.28**", "2.3 (5)"]]
  assert "noise floor 0.5" in ts[0]["before"]
  assert plots.number("**0.28**") == 0.28 and plots.number("1,454") == 1454.0
  assert plots.number("2.3 (5)") == 2.3 and plots.number("1e-3 s") == 1e-3
  assert plots.mean_std("**0.886 ± 0.007**") == (0.886, 0.007)
  assert plots.mean_std("3.5") == (3.5, 0.0)
  assert plots.find(MD, "variant", has="accuracy") == ts[1]
  with pytest.raises(ValueError):
    plots.find(MD, "variant", has="fdd")
  with pytest.raises(ValueError):
    plots.number("—")


def test_samplers_plot_from_handmade_table(tmp_path):
  from PIL import Image
  path = plots.samplers(MD, str(tmp_path / "s.png"))
  img = np.asarray(Image.open(path).convert("L"))
  assert img.shape[0] > 100 and img.std() > 5


def test_every_docs_picture_is_made_and_linked(tmp_path):
  from PIL import Image
  made = plots.make_all(os.path.join(ROOT, "docs"), str(tmp_path))
  assert len(made) == len(plots.PAGES)
  for page, (name, _) in plots.PAGES.items():
    img = np.asarray(Image.open(tmp_path / name).convert("L"))
    assert img.shape[0] > 100 and img.shape[1] > 200 and img.std() > 5, name
    assert os.path.exists(os.path.join(ROOT, "docs", "img", name)), name  # committed copy
    with open(os.path.join(ROOT, "docs", page)) as f:
      text = f.read()
    assert f"](img/{name})" in text and "python bench/plots.py" in text, page
