"""Distribution metrics on feature arrays: Fréchet distance, KID, precision and recall.

Pure NumPy, float64 throughout: features are [N, D] arrays from any embedding (Inception pool3 for
FID/KID/PR, the digits classifier for FDD).
"""

from __future__ import annotations

import numpy as np


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance (ddof=1) of [N, D] features, in float64, as the FID reference."""
  f = np.asarray(features, dtype=np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}")
  mu = f.mean(axis=0)
  sigma = np.cov(f, rowvar=False)
  return mu, np.atleast_2d(sigma)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (tiny negative eigenvalues from rounding → 0)."""
  w, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) between two Gaussians.

  Tr (Σ1 Σ2)^½ equals Σ_i √λ_i of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½ (same eigenvalues as Σ1 Σ2),
  which an eigen-decomposition handles stably even when Σ1 Σ2 is singular.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
  s1h = _psd_sqrt(sigma1)
  m = s1h @ sigma2 @ s1h
  eig = np.linalg.eigvalsh((m + m.T) / 2)
  tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
  diff = mu1 - mu2
  fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
  return float(max(fd, 0.0))  # a distance: rounding can leave ~-1e-9·trace on equal inputs


def frechet_distance_features(features1, features2) -> float:
  """Fréchet distance between the Gaussians fitted to two feature sets."""
  return frechet_distance(*feature_stats(features1), *feature_stats(features2))


def kid(features_real, features_fake, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
  """Kernel Inception Distance (Bińkowski et al. 2018): mean and std over subsets of the unbiased
  MMD² with the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³.

  Each subset draws m = min(N_real, N_fake, max_subset_size) rows of each set without replacement.
  Within-set sums leave out the diagonal (i = j); the cross sum keeps all pairs (they are independent).
  """
  x_all = np.asarray(features_real, np.float64)
  y_all = np.asarray(features_fake, np.float64)
  if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
    raise ValueError(f"features must be [N, D] with equal D, got {x_all.shape} and {y_all.shape}")
  d = x_all.shape[1]
  m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
  if m < 2:
    raise ValueError("KID needs at least 2 feature vectors in each set")
  rng = np.random.default_rng(seed)
  values = np.empty(num_subsets)
  for s in range(num_subsets):
    x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
    y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    values[s] = within - 2.0 * kxy.sum() / (m * m)
  return float(values.mean()), float(values.std())


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  d2 = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
  return np.maximum(d2, 0.0)


def knn_radii(features, k: int = 3, row_batch: int = 256) -> np.ndarray:
  """Distance of each row to its k-th nearest neighbour among the other rows (self excluded)."""
  f = np.asarray(features, np.float64)
  n = f.shape[0]
  if not 1 <= k < n:
    raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
  radii = np.empty(n)
  for start in range(0, n, row_batch):
    d2 = _sq_dists(f[start:start + row_batch], f)
    # The self-distance (0) sorts first, so the k-th neighbour sits at index k.
    radii[start:start + row_batch] = np.sqrt(np.partition(d2, k, axis=1)[:, k])
  return radii


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray, row_batch: int) -> float:
  """Share of queries inside at least one ball B(manifold_i, radii_i)."""
  inside = np.empty(queries.shape[0], dtype=bool)
  for start in range(0, queries.shape[0], row_batch):
    d = np.sqrt(_sq_dists(queries[start:start + row_batch], manifold))
    inside[start:start + row_batch] = (d <= radii[None, :]).any(axis=1)
  return float(inside.mean())


def precision_recall(features_real, features_fake, k: int = 3,
                     row_batch: int = 256) -> tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN hypersphere manifolds.

  precision: share of fake samples inside the real manifold; recall: share of real samples inside
  the fake manifold. Each manifold is the union of balls around its points with radius the distance
  to the k-th nearest neighbour in the same set.
  """
  real = np.asarray(features_real, np.float64)
  fake = np.asarray(features_fake, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"features must be [N, D] with equal D, got {real.shape} and {fake.shape}")
  precision = _coverage(real, knn_radii(real, k, row_batch), fake, row_batch)
  recall = _coverage(fake, knn_radii(fake, k, row_batch), real, row_batch)
  return precision, recall
