"""scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside scikit-learn: no download)."""

import numpy as np

from jaxdiff.data.source import ArraySource


def load_digits_source() -> ArraySource:
  from sklearn.datasets import load_digits
  d = load_digits()
  # Pixel values are 0..16: map them to [-1, 1] as the reference does for 0..255.
  images = (d.images.astype(np.float32) / 8.0 - 1.0)[..., None]
  return ArraySource("digits", images, d.target.astype(np.int32), num_classes=10)
