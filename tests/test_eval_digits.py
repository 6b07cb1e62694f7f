"""The offline digits metric: classifier accuracy on held-out real digits, FDD floor vs noise, cache."""

import os

import chex
import numpy as np
import pytest

from jaxdiff.errors import JaxdiffError
from jaxdiff.eval import digits_metric as dm
from jaxdiff.eval.metrics import frechet_distance_features


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  path = tmp_path_factory.mktemp("jaxdiff_cache")
  mp = pytest.MonkeyPatch()
  mp.setenv("JAXDIFF_CACHE", str(path))
  yield path
  mp.undo()


@pytest.fixture(scope="module")
def classifier(cache):
  return dm.load_classifier(verbose=False)


def _params(model):
  return {k: np.asarray(v) for k, v in dm._flat_params(model).items()}


def test_real_digits_uint8_matches_sampler_quantisation():
  images, labels = dm.real_digits()
  chex.assert_shape([images, labels], [(1797, 8, 8, 1), (1797,)])
  assert images.dtype == np.uint8 and labels.dtype == np.int32
  from sklearn.datasets import load_digits
  x = load_digits().images[..., None] / 8.0 - 1.0  # jaxdiff's model space for digits
  # what a sampler writes for x: floor(127.5·x + 128), clipped (the EDM reference's conversion)
  np.testing.assert_array_equal(images, np.clip(np.floor(127.5 * x + 128), 0, 255).astype(np.uint8))


def test_split_is_disjoint_and_fixed():
  train, held = dm.split_indices(1797)
  assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == 1797
  assert len(held) == round(0.2 * 1797)
  np.testing.assert_array_equal(held, dm.split_indices(1797)[1])


def test_heldout_accuracy_high(classifier):
  images, labels = dm.real_digits()
  _, held = dm.split_indices(len(images))
  acc = dm.accuracy(images[held], labels[held], classifier)
  assert acc >= 0.9
  # accuracy is the share of predictions equal to the label: check against predict() directly
  assert acc == np.mean(dm.predict(images[held], classifier) == labels[held])
  shuffled = np.random.default_rng(0).permutation(labels[held])
  assert dm.accuracy(images[held], shuffled, classifier) < 0.3


def test_fdd_noise_far_above_real_floor(classifier):
  floor = dm.fdd_floor(classifier)
  images, _ = dm.real_digits()
  rng = np.random.default_rng(0)
  noise = np.clip(rng.normal(127.5, 64.0, images.shape), 0, 255).astype(np.uint8)
  noise_fdd = dm.fdd(noise, classifier)
  assert 0.0 < floor and noise_fdd > 20 * floor
  # fdd is the Fréchet distance of the classifier features, computed here independently
  feats = dm.classifier_features(noise, classifier)
  real = dm.classifier_features(images, classifier)
  chex.assert_shape(feats, (1797, dm.FEATURE_DIM))
  np.testing.assert_allclose(noise_fdd, frechet_distance_features(feats, real), rtol=1e-9)


def test_cache_written_atomically_and_reused(cache, classifier):
  path = dm.cache_path()
  assert os.path.dirname(path) == str(cache) and os.path.isfile(path)
  assert sorted(os.listdir(cache)) == [os.path.basename(path)]  # no temp file left
  again = dm.load_classifier(verbose=False)
  assert all(np.array_equal(a, b) for a, b in zip(_params(classifier).values(),
                                                 _params(again).values()))


def test_training_is_deterministic(classifier):
  fresh = dm.train_classifier()
  a, b = _params(classifier), _params(fresh)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_corrupt_cache_is_retrained(cache, classifier):
  path = dm.cache_path()
  with open(path, "wb") as f:
    f.write(b"garbage")
  model = dm.load_classifier(verbose=False)
  assert all(np.array_equal(a, b) for a, b in zip(_params(classifier).values(),
                                                 _params(model).values()))
  with np.load(path) as z:
    assert str(z["recipe"]) == dm.RECIPE


def test_cache_dir_resolution(monkeypatch):
  from jaxdiff.eval.cache import cache_dir
  monkeypatch.delenv("JAXDIFF_CACHE", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
  assert cache_dir() == "/x/cache/jaxdiff"
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "jaxdiff")
  monkeypatch.setenv("JAXDIFF_CACHE", "/y")
  assert cache_dir() == "/y"


def test_rejects_non_digit_images(classifier):
  with pytest.raises(JaxdiffError, match=r"8×8 grey"):
    dm.fdd(np.zeros((4, 32, 32, 3), np.uint8), classifier)
  with pytest.raises(JaxdiffError, match="uint8"):
    dm.predict(np.zeros((4, 8, 8, 1), np.float32), classifier)
