"""Model reproducibility (Zhang et al., ICML 2024, "The Emergence of Reproducibility and Consistency
in Diffusion Models"): do two models map the same noise to the same image?

The paper's RP score is the share of pairs (x_A(z), x_B(z)) from the same initial noise z whose
similarity exceeds a threshold. Its similarity is SSCD (Pizzi et al., CVPR 2022): the cosine of the
L2-normalised descriptors of a copy-detection ResNeXt-101 (sscd_disc_large), images resized to
320x320; the threshold is 0.6 (`similarity > 0.6`; huijieZH/Diffusion-Model-Generalizability,
edm/sscd.py).

For small images (the 8x8 digits) this module uses a pixel-space measure instead: the cosine of the
two images after centring each (subtracting its own mean), i.e. the Pearson correlation of the
pixels, in [-1, 1]. Why not SSCD: its weights are a download, and a descriptor trained on 320x320
photographs says little about an 8x8 digit blown up 40 times; with 64 pixels the correlation is well
defined, insensitive to brightness offset and contrast, and exactly 1 for identical images.

Why the default threshold is 0.9, not the paper's 0.6: on the digits data themselves, two random
real digits have a centred cosine > 0.6 in 23 % of pairs (77 % of same-class pairs), > 0.9 in
0.7 % (7 % of same-class pairs), while a digit's nearest other digit has a median of 0.95. So 0.6
would call most unrelated same-class digits "reproduced"; 0.9 calls a pair reproduced only when it
is about as close as a near-duplicate in the data. For independent Gaussian noise images the
chance figure is `chance_score(threshold, dim)` (analytic, below).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxdiff.errors import JaxdiffError

PIXEL_THRESHOLD = 0.9  # centred pixel cosine, chosen from the digits data (see above)
SSCD_THRESHOLD = 0.6  # the paper's threshold, for SSCD descriptors (not computed here)


def centred_cosine(a, b) -> np.ndarray:
  """Per-pair cosine of the centred images: a, b [N, ...] -> [N] float64 in [-1, 1].

  Each image has its own mean subtracted first (Pearson correlation of the pixels), so the measure
  ignores brightness offset and contrast. A constant image has no direction: two constant images
  score 1 (equal up to offset, like any pair the measure calls identical), one constant image 0.
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim < 2:
    raise JaxdiffError(f"need two image batches of one shape [N, ...], got {a.shape} and {b.shape}")
  a = a.reshape(a.shape[0], -1)
  b = b.reshape(b.shape[0], -1)
  # Flat means no spread beyond rounding of the values themselves.
  flat_a = np.ptp(a, axis=1) <= 1e-12 * np.max(np.abs(a), axis=1)
  flat_b = np.ptp(b, axis=1) <= 1e-12 * np.max(np.abs(b), axis=1)
  a = a - a.mean(axis=1, keepdims=True)
  b = b - b.mean(axis=1, keepdims=True)
  norms = np.where(flat_a | flat_b, 1.0, np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
  sim = np.clip(np.sum(a * b, axis=1) / norms, -1.0, 1.0)
  return np.where(flat_a & flat_b, 1.0, np.where(flat_a | flat_b, 0.0, sim))


class Reproducibility(NamedTuple):
  score: float  # share of pairs with similarity > threshold (the RP score)
  mean: float  # mean similarity
  threshold: float
  num: int  # pairs
  hist: np.ndarray  # [bins] counts of similarity over [-1, 1]
  edges: np.ndarray  # [bins + 1]
  similarity: np.ndarray  # [num] per pair

  def to_dict(self) -> dict:
    return {"score": self.score, "mean_similarity": self.mean, "threshold": self.threshold,
            "num": self.num, "hist": [int(c) for c in self.hist],
            "edges": [float(e) for e in self.edges]}


def reproducibility(a, b, threshold: float = PIXEL_THRESHOLD, bins: int = 20) -> Reproducibility:
  """RP score of pairs (a[i], b[i]): share with centred cosine > threshold, the mean, a histogram."""
  if not -1.0 <= threshold <= 1.0:
    raise JaxdiffError(f"threshold must be in [-1, 1], got {threshold}")
  sim = centred_cosine(a, b)
  hist, edges = np.histogram(sim, bins=bins, range=(-1.0, 1.0))
  return Reproducibility(float(np.mean(sim > threshold)), float(np.mean(sim)), float(threshold),
                         int(sim.size), hist, edges, sim)


def chance_score(threshold: float, dim: int) -> float:
  """P(centred cosine > threshold) for two independent images of i.i.d. Gaussian pixels.

  Centring projects each image onto the (dim − 1)-dimensional zero-mean subspace, where it is
  isotropic, so the cosine r of two independent ones is that of a uniform direction with a fixed
  one in m = dim − 1 dimensions: density ∝ (1 − r²)^((m − 3)/2) on [-1, 1], i.e.
  (1 + r)/2 ~ Beta((m − 1)/2, (m − 1)/2); mean 0, variance 1/m. (64 pixels, threshold 0.9: 2.4e-24.)
  """
  from scipy.special import betainc  # scipy comes with scikit-learn
  m = dim - 1
  if m < 2:
    raise JaxdiffError(f"need images of at least 3 pixels, got {dim}")
  x = min(max((1.0 + float(threshold)) / 2, 0.0), 1.0)
  return float(betainc((m - 1) / 2, (m - 1) / 2, 1.0 - x))  # the upper tail, without cancellation
