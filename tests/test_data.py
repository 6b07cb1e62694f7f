import chex
import numpy as np
import pytest

from jaxdiff.data import ArraySource, batch_indices, check_source, open_source
from jaxdiff.errors import JaxdiffError


def test_digits_source_range_and_shape():
  src = open_source("digits")
  images, labels = src.get(np.arange(len(src)))
  chex.assert_shape(images, (1797, 8, 8, 1))
  chex.assert_type(images, np.float32)
  assert images.min() == -1.0 and images.max() == 1.0  # 0 -> -1 and 16 -> +1
  assert set(np.unique(labels)) == set(range(10))


def test_batch_order_is_pure_and_covers_each_epoch():
  n, b = 50, 16
  first = np.concatenate([batch_indices(s, b, n, seed=3) for s in range(10)])
  again = np.concatenate([batch_indices(s, b, n, seed=3) for s in range(10)])
  np.testing.assert_array_equal(first, again)
  assert sorted(first[:n]) == list(range(n))            # epoch 0 is a permutation
  assert sorted(first[n:2 * n]) == list(range(n))       # and so is epoch 1
  assert not np.array_equal(first[:n], first[n:2 * n])  # reshuffled


def test_hosts_split_the_global_batch():
  full = batch_indices(5, 16, 100, seed=0)
  parts = [batch_indices(5, 16, 100, seed=0, process_index=i, process_count=4) for i in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), full)
  with pytest.raises(JaxdiffError, match="divisible"):
    batch_indices(0, 10, 100, 0, 0, 3)


def _src(images, labels, num_classes=10):
  return ArraySource("test", images.astype(np.float32), labels.astype(np.int32), num_classes)


def test_check_source_errors():
  good = _src(np.zeros((4, 8, 8, 1)), np.arange(4))
  check_source(good, resolution=8, channels=1, num_classes=10)
  with pytest.raises(JaxdiffError, match=r"shape \(8, 8, 3\)"):
    check_source(_src(np.zeros((4, 8, 8, 3)), np.arange(4)), resolution=8, channels=1,
                 num_classes=10)
  with pytest.raises(JaxdiffError, match="empty"):
    check_source(_src(np.zeros((0, 8, 8, 1)), np.arange(0)), resolution=8, channels=1,
                 num_classes=10)
  with pytest.raises(JaxdiffError, match="outside"):
    check_source(_src(np.zeros((4, 8, 8, 1)), np.array([0, 1, 2, 12])), resolution=8,
                 channels=1, num_classes=10)


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    src = open_source("tfds:mnist")
    assert (src.resolution, src.channels, src.num_classes, len(src)) == (28, 1, 10, 6)
    images, labels = src.get(np.arange(6))
    chex.assert_shape(images, (6, 28, 28, 1))
    assert -1.0 <= images.min() and images.max() <= 1.0
    chex.assert_type(labels, np.int32)
    check_source(src, resolution=28, channels=1, num_classes=10)


def test_tfds_unknown_and_unprepared(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(JaxdiffError, match="no dataset named"):
    open_source("tfds:no_such_dataset_xyz")
  with pytest.raises(JaxdiffError, match="not prepared"):
    open_source("tfds:mnist", tfds_data_dir=str(tmp_path))
  assert not any(tmp_path.rglob("*.array_record*"))  # nothing was downloaded or prepared


def test_unknown_data_name():
  with pytest.raises(JaxdiffError, match="unknown data.name"):
    open_source("cifar11")
