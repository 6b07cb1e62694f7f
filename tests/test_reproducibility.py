"""The reproducibility score and its pixel similarity on hand-made cases: identical, shifted,
independent noise (against the analytic chance figure), and the degenerate cases."""

import os

import chex
import numpy as np
import pytest

from jaxdiff.errors import JaxdiffError
from jaxdiff.eval.reproducibility import (PIXEL_THRESHOLD, centred_cosine, chance_score,
                                          reproducibility)


def test_identical_images_score_one():
  x = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 1)).astype(np.uint8)
  r = reproducibility(x, x)
  assert r.score == 1.0 and r.mean == pytest.approx(1.0, abs=1e-12) and r.num == 50
  chex.assert_shape(r.similarity, (50,))
  assert r.hist.sum() == 50 and r.hist[-1] == 50 and r.edges[0] == -1 and r.edges[-1] == 1
  # Brightness offset and contrast do not matter (the measure centres and normalises).
  np.testing.assert_allclose(centred_cosine(x, 3.0 * x.astype(float) + 7), 1.0, atol=1e-12)
  np.testing.assert_allclose(centred_cosine(x, -x.astype(float)), -1.0, atol=1e-12)


def test_single_pixel_shifted_by_one():
  """A delta image against the same delta moved one pixel: centred, e_i − 1/n and e_j − 1/n, whose
  cosine is (−1/n) / (1 − 1/n) = −1/(n − 1) by hand."""
  a = np.zeros((1, 8, 8, 1))
  a[0, 3, 3] = 1
  b = np.roll(a, 1, axis=2)
  np.testing.assert_allclose(centred_cosine(a, b), [-1 / 63], rtol=1e-12)
  assert reproducibility(a, b).score == 0.0


def test_shifted_smooth_image_against_numpy_correlation():
  """A smooth blob shifted by one pixel: the similarity is NumPy's Pearson correlation, and it is
  high but below 1, so it passes a low threshold and fails a high one."""
  yy, xx = np.mgrid[:8, :8]
  blob = np.exp(-((yy - 3.5) ** 2 + (xx - 3.0) ** 2) / 6.0)
  a, b = blob[None, ..., None], np.roll(blob, 1, axis=1)[None, ..., None]
  want = np.corrcoef(a.ravel(), b.ravel())[0, 1]
  np.testing.assert_allclose(centred_cosine(a, b), [want], rtol=1e-12)
  assert 0.5 < want < 0.99
  assert reproducibility(a, b, threshold=want - 1e-6).score == 1.0
  assert reproducibility(a, b, threshold=want + 1e-6).score == 0.0


def _numeric_tail(t, m, n=400_001):
  """P(r > t) for the cosine of a uniform direction in m dims, by integrating (1 − r²)^((m−3)/2)."""
  r = np.linspace(-1, 1, n)[1:-1]
  f = (1 - r**2) ** ((m - 3) / 2)
  return np.trapezoid(f[r > t], r[r > t]) / np.trapezoid(f, r)


def test_independent_noise_is_near_the_analytic_chance_figure():
  rng = np.random.default_rng(1)
  n, dim = 20000, 64
  a, b = rng.normal(size=(n, 8, 8, 1)), rng.normal(size=(n, 8, 8, 1))
  for t in (0.0, 0.1, 0.2, 0.3):
    p = chance_score(t, dim)
    np.testing.assert_allclose(p, _numeric_tail(t, dim - 1), rtol=1e-4)
    got = reproducibility(a, b, threshold=t).score
    assert abs(got - p) < 4 * np.sqrt(p * (1 - p) / n), (t, got, p)
  sim = centred_cosine(a, b)
  assert abs(sim.mean()) < 4 / np.sqrt(63 * n)  # mean 0, variance 1/(dim − 1)
  assert abs(sim.var() * 63 - 1) < 0.05
  # At the default threshold, independent noise never passes (2.4e-24 per pair).
  assert chance_score(PIXEL_THRESHOLD, dim) < 1e-20
  assert reproducibility(a, b).score == 0.0


def test_degenerate_inputs():
  flat = np.full((2, 8, 8, 1), 5.0)
  flat[1] = 200.0
  x = np.random.default_rng(2).normal(size=(2, 8, 8, 1))
  np.testing.assert_array_equal(centred_cosine(flat, flat[::-1]), [1.0, 1.0])
  np.testing.assert_array_equal(centred_cosine(flat, x), [0.0, 0.0])
  with pytest.raises(JaxdiffError, match="shape"):
    centred_cosine(x, x[:1])
  with pytest.raises(JaxdiffError, match="threshold"):
    reproducibility(x, x, threshold=1.5)
  d = reproducibility(x, x).to_dict()
  assert d["score"] == 1.0 and len(d["hist"]) == 20 and len(d["edges"]) == 21


def _bench():
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), "..", "bench", "reproducibility.py")
  spec = importlib.util.spec_from_file_location("_bench_reproducibility", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_bench_dry_run_lists_trainings_and_comparisons(tmp_path, capsys):
  bench = _bench()
  assert bench.main(["--root", str(tmp_path), "--train", "--dry-run", "--seeds", "0", "1",
                     "--override=--config.training.steps=10"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  trains = [line for line in lines if " train " in line]
  compares = [line for line in lines if " compare " in line]
  names = sorted(line.split("--workdir ")[1].split()[0].rsplit("/", 1)[1] for line in trains)
  want = [f"{r}-s{s}" for r in ("base", "ddpmpp", "half", "multistage", "vp") for s in (0, 1)]
  if os.path.isfile(os.path.join(bench.CONFIGS, "digits_edm2.py")):
    want += ["edm2-s0", "edm2-s1"]
  assert names == sorted(want)
  assert all("--config.training.steps=10" in line for line in trains)
  assert any("--config.training.seed=1" in line and "/base-s1" in line for line in trains)
  assert sum("--shuffle" in line for line in compares) == 2
  assert sum("--s-churn 40" in line for line in compares) == 2
  assert sum("--steps-b 35" in line for line in compares) == 2
  assert sum("/base-s0 --workdir " in line and "/base-s1 " in line for line in compares) == 1
  assert not list(tmp_path.iterdir())  # a dry run creates no workdir


def test_bench_table_and_plots(tmp_path):
  bench = _bench()
  rng = np.random.default_rng(0)
  npz = tmp_path / "p.npz"
  np.savez(npz, images_a=rng.integers(0, 256, (12, 8, 8, 1)).astype(np.uint8),
           images_b=rng.integers(0, 256, (12, 8, 8, 1)).astype(np.uint8),
           similarity=rng.uniform(-1, 1, 12))
  results = [dict(group=g, a="base-s0", b="x-s0", score=sc, mean_similarity=m, num=12,
                  threshold=0.9, pairs_npz=str(npz))
             for g, sc, m in (("seed", 0.8, 0.9), ("seed", 0.6, 0.7), ("arch", 0.2, 0.5))]
  text = bench.table(results)
  assert "| seed | 2 | 0.700 ± 0.100 | 0.800 | 12 |" in text
  assert "| arch | 1 | 0.200 ± 0.000 | 0.500 | 12 |" in text
  bench.plot(results, str(tmp_path / "a.png"))
  bench.plot_pairs(results, str(tmp_path / "b.png"))
  assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0
