"""Quality of conditional digits samples, judged by a classifier independent of jaxdiff.

An RBF SVC (scikit-learn) is fitted on the real digits; the score is the share of samples it labels
as the class they were drawn for. Its own held-out accuracy on real digits is printed as the
ceiling. Usage: python bench/digits_quality.py SAMPLES.npz [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def real_digits_classifier(seed: int = 0):
  """(classifier fitted on 80% of the real digits, held-out accuracy on the other 20%)."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  from sklearn.svm import SVC
  d = load_digits()
  x_tr, x_te, y_tr, y_te = train_test_split(d.data, d.target, test_size=0.2, random_state=seed,
                                            stratify=d.target)
  clf = SVC(gamma=0.001, C=10.0).fit(x_tr, y_tr)
  return clf, float(np.mean(clf.predict(x_te) == y_te))


def uint8_to_digit_pixels(images: np.ndarray) -> np.ndarray:
  """uint8 images (from model space [-1, 1]) back to the 0..16 pixel scale of load_digits."""
  x = (images.astype(np.float64) - 127.5) / 127.5
  return np.clip((x + 1.0) * 8.0, 0.0, 16.0).reshape(len(images), -1)


def sample_accuracy(images: np.ndarray, labels: np.ndarray, clf) -> float:
  return float(np.mean(clf.predict(uint8_to_digit_pixels(images)) == labels))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("samples")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  data = np.load(args.samples)
  clf, real_acc = real_digits_classifier()
  acc = sample_accuracy(data["images"], data["labels"], clf)
  result = dict(sample_accuracy=acc, real_heldout_accuracy=real_acc, num_samples=len(data["images"]))
  print(json.dumps(result) if args.json else
        f"samples classified as their label: {acc:.3f} (n={len(data['images'])}); "
        f"real held-out digits: {real_acc:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
