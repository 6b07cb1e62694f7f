"""Fréchet distance, KID, precision/recall and stats files, against closed forms and brute force."""

import chex
import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

from jaxdiff.errors import JaxdiffError
from jaxdiff.eval import metrics as M
from jaxdiff.eval import stats as S


def _random_spd(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d))
  return a @ a.T / d + (1e-3 * np.eye(d) if rank is None else 0.0)


# ---- Fréchet distance ----------------------------------------------------------------------------

def test_frechet_diagonal_closed_form():
  # Diagonal Σ: Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) = Σ_i (√a_i − √b_i)².
  rng = np.random.default_rng(0)
  d = 7
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert isinstance(got, float)
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_commuting_closed_form():
  # Σ1 = Q diag(a) Qᵀ and Σ2 = Q diag(b) Qᵀ commute: the same closed form holds in the Q basis.
  rng = np.random.default_rng(1)
  d = 6
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  a, b = rng.uniform(0.2, 2, d), rng.uniform(0.2, 2, d)
  s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
  mu = rng.standard_normal(d)
  expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(M.frechet_distance(mu, s1, mu, s2), expected, rtol=1e-9)


def test_frechet_general_matches_scipy_sqrtm():
  # Non-commuting full covariances: compare with the formula evaluated by scipy's sqrtm of Σ1Σ2.
  rng = np.random.default_rng(2)
  d = 12
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  np.testing.assert_allclose(M.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-8)
  np.testing.assert_allclose(M.frechet_distance(mu1, s1, mu2, s2),
                             M.frechet_distance(mu2, s2, mu1, s1), rtol=1e-9)


def test_frechet_singular_covariance_is_zero_on_equal_inputs():
  rng = np.random.default_rng(3)
  s = _random_spd(rng, 20, rank=5)  # rank-deficient, as with fewer samples than dimensions
  mu = rng.standard_normal(20)
  assert abs(M.frechet_distance(mu, s, mu, s)) < 1e-8


def test_feature_stats_float64_unbiased():
  rng = np.random.default_rng(4)
  f = rng.standard_normal((50, 4)).astype(np.float32)
  mu, sigma = M.feature_stats(f)
  chex.assert_shape([mu, sigma], [(4,), (4, 4)])
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  f64 = f.astype(np.float64)
  centered = f64 - f64.sum(0) / 50
  np.testing.assert_allclose(sigma, centered.T @ centered / 49, rtol=1e-12)


def test_frechet_features_of_gaussian_samples_near_analytic():
  rng = np.random.default_rng(5)
  x = rng.normal(0.0, 1.0, (20000, 3))
  y = rng.normal(1.0, 2.0, (20000, 3))
  expected = 3 * 1.0 + 3 * (2.0 - 1.0) ** 2  # ‖Δμ‖² + Σ(σ1 − σ2)²
  np.testing.assert_allclose(M.frechet_distance_features(x, y), expected, rtol=0.05)


# ---- KID -----------------------------------------------------------------------------------------

def _mmd2_unbiased_loops(x, y):
  """Unbiased MMD² with k(a, b) = (aᵀb/d + 1)³, written out pair by pair."""
  m, d = x.shape
  k = lambda a, b: (a @ b / d + 1.0) ** 3
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return xx + yy - 2 * xy


def test_kid_single_full_subset_matches_pairwise_formula():
  rng = np.random.default_rng(6)
  x, y = rng.standard_normal((15, 5)), rng.standard_normal((15, 5)) + 0.3
  # m = N: each subset is a permutation of the whole set, which the estimator does not see.
  mean, std = M.kid(x, y, num_subsets=3, max_subset_size=100)
  np.testing.assert_allclose(mean, _mmd2_unbiased_loops(x, y), rtol=1e-10)
  assert std < 1e-9


def test_kid_unbiased_near_zero_on_one_distribution():
  # Average over independent pairs of draws: the unbiased estimator centres on 0.
  rng = np.random.default_rng(7)
  values = [M.kid(rng.standard_normal((60, 8)), rng.standard_normal((60, 8)),
                  num_subsets=1, max_subset_size=60)[0] for _ in range(200)]
  mean, sem = np.mean(values), np.std(values) / np.sqrt(len(values))
  assert abs(mean) < 3 * sem
  # The biased (V-statistic) estimator on the same kind of draws sits clearly above 0.
  x, y = rng.standard_normal((60, 8)), rng.standard_normal((60, 8))
  k = lambda a, b: (a @ b.T / 8 + 1.0) ** 3
  biased = k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()
  assert biased > 10 * sem


def test_kid_positive_on_different_distributions():
  rng = np.random.default_rng(8)
  x = rng.standard_normal((300, 8))
  y = rng.standard_normal((300, 8)) * 1.5 + 0.5
  mean, std = M.kid(x, y, num_subsets=20, max_subset_size=200)
  same, _ = M.kid(x, rng.standard_normal((300, 8)), num_subsets=20, max_subset_size=200)
  assert mean > 0.1 and mean > 20 * abs(same)


# ---- precision / recall --------------------------------------------------------------------------

def test_knn_radii_match_brute_force():
  rng = np.random.default_rng(9)
  f = rng.standard_normal((40, 6))
  d = cdist(f, f)
  for k in (1, 3):
    expected = np.sort(d, axis=1)[:, k]  # column 0 is the point itself
    np.testing.assert_allclose(M.knn_radii(f, k=k, row_batch=7), expected, rtol=1e-9)


def test_precision_recall_hand_built():
  # Real: 0, 1, ..., 9 on a line; with k = 1 every real ball has radius 1, covering [−1, 10].
  real = np.arange(10.0)[:, None]
  # Fake: 0.5 (inside) and 100 (outside) → precision 1/2. The two fakes are 99.5 apart, so each
  # fake ball has radius 99.5 and the one around 0.5 covers every real point → recall 1.
  fake = np.array([[0.5], [100.0]])
  p, r = M.precision_recall(real, fake, k=1)
  assert (p, r) == (0.5, 1.0)
  # Fakes clustered at 4.5..4.8 (radius 0.1 each) cover no real integer → recall 0, precision 1.
  fake2 = np.array([[4.5], [4.6], [4.7], [4.8]])
  p, r = M.precision_recall(real, fake2, k=1)
  assert p == 1.0 and r == 0.0


def test_precision_recall_identical_sets_and_brute_force():
  rng = np.random.default_rng(10)
  real, fake = rng.standard_normal((80, 5)), rng.standard_normal((70, 5)) + 0.7
  assert M.precision_recall(real, real, k=3) == (1.0, 1.0)
  d_rf = cdist(real, fake)
  r_real = np.sort(cdist(real, real), 1)[:, 3]
  r_fake = np.sort(cdist(fake, fake), 1)[:, 3]
  expected_p = np.mean((d_rf <= r_real[:, None]).any(axis=0))
  expected_r = np.mean((d_rf <= r_fake[None, :]).any(axis=1))
  p, r = M.precision_recall(real, fake, k=3, row_batch=16)
  np.testing.assert_allclose([p, r], [expected_p, expected_r])
  assert 0.0 < p < 1.0 and 0.0 < r < 1.0


# ---- stats files ---------------------------------------------------------------------------------

def test_stats_round_trip(tmp_path):
  rng = np.random.default_rng(11)
  feats = rng.standard_normal((30, 4))
  mu, sigma = M.feature_stats(feats)
  path = tmp_path / "sub" / "ref.npz"
  S.save_stats(str(path), mu, sigma, feats)
  with np.load(path) as z:  # the reference's key names, readable without jaxdiff
    assert set(z.files) == {"mu", "sigma", "features"}
  got = S.load_stats(str(path))
  np.testing.assert_array_equal(got["mu"], mu)
  np.testing.assert_array_equal(got["sigma"], sigma)
  np.testing.assert_allclose(got["features"], feats.astype(np.float32))
  assert [p.name for p in path.parent.iterdir()] == ["ref.npz"]  # no temporary file left behind


def test_stats_errors(tmp_path):
  with pytest.raises(JaxdiffError, match="not found"):
    S.load_stats(str(tmp_path / "missing.npz"))
  bad = tmp_path / "bad.npz"
  np.savez(bad, mean=np.zeros(3), cov=np.eye(3))
  with pytest.raises(JaxdiffError, match=r"lack key\(s\) \['mu', 'sigma'\]"):
    S.load_stats(str(bad))
  wrong = tmp_path / "wrong.npz"
  np.savez(wrong, mu=np.zeros(3), sigma=np.eye(4))
  with pytest.raises(JaxdiffError, match="expected"):
    S.load_stats(str(wrong))
  text = tmp_path / "text.npz"
  text.write_text("not a zip")
  with pytest.raises(JaxdiffError, match="cannot read"):
    S.load_stats(str(text))


def test_load_samples_checks(tmp_path):
  p = tmp_path / "s.npz"
  np.savez(p, images=np.zeros((4, 8, 8, 1), np.uint8), labels=np.arange(4))
  images, labels = S.load_samples(str(p))
  chex.assert_shape(images, (4, 8, 8, 1))
  assert labels.dtype == np.int32
  np.savez(p, images=np.zeros((4, 8, 8, 1), np.float32))
  with pytest.raises(JaxdiffError, match="uint8"):
    S.load_samples(str(p))
  np.savez(p, pictures=np.zeros((4, 8, 8, 1), np.uint8))
  with pytest.raises(JaxdiffError, match="no 'images'"):
    S.load_samples(str(p))
