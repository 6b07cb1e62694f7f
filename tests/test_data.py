import io
import json
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


def test_digits_arrays_are_scikit_learns_load_digits():
  from sklearn.datasets import load_digits
  from jaxdiff.data.digits import load_digits_arrays
  pixels, labels = load_digits_arrays()
  d = load_digits()
  np.testing.assert_array_equal(pixels, d.images)
  np.testing.assert_array_equal(labels, d.target)
  chex.assert_type(labels, np.int32)


def test_digits_without_scikit_learns_file_is_a_clear_error(monkeypatch):
  import importlib.util
  from jaxdiff.data import digits
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(JaxdiffError, match="pip install scikit-learn"):
    digits.load_digits_arrays()


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


def _write_dataset(root, images, labels=None, as_zip=False):
  """The reference's layout: 00000/img00000000.png ... plus dataset.json."""
  import io
  import json
  import zipfile

  from PIL import Image
  files = {}
  for i, img in enumerate(images):
    buf = io.BytesIO()
    Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(buf, format="png")
    files[f"{i // 1000:05d}/img{i:08d}.png"] = buf.getvalue()
  if labels is not None:
    files["dataset.json"] = json.dumps(
        {"labels": [[n, int(l)] for n, l in zip(sorted(k for k in files), labels)]}).encode()
  if as_zip:
    path = str(root) + ".zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
      for name, data in files.items():
        z.writestr(name, data)
    return "zip:" + path
  for name, data in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(data)
  return "folder:" + str(root)


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_reference_folder_and_zip(tmp_path, as_zip):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
  name = _write_dataset(tmp_path / "ds", images, labels=[3, 1, 4, 1, 5], as_zip=as_zip)
  src = open_source(name)
  assert (len(src), src.resolution, src.channels, src.num_classes) == (5, 4, 3, 6)
  got, labels = src.get(np.array([4, 0]))
  np.testing.assert_allclose(got, images[[4, 0]].astype(np.float64) / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(labels, [5, 3])
  chex.assert_type([got, labels], [np.float32, np.int32])
  check_source(src, resolution=4, channels=3, num_classes=6)
  with pytest.raises(JaxdiffError, match=r"shape \(4, 4, 3\).*expects \(4, 4, 1\)"):
    check_source(src, resolution=4, channels=1, num_classes=6)
  with pytest.raises(JaxdiffError, match=r"labels in \[1, 5\], outside \[0, 3\]"):
    check_source(src, resolution=4, channels=3, num_classes=4)


def test_file_dataset_bad_inputs(tmp_path):
  gray = np.zeros((2, 4, 4, 1), np.uint8)
  src = open_source(_write_dataset(tmp_path / "unlabelled", gray))
  assert src.channels == 1 and src.num_classes == 0
  with pytest.raises(JaxdiffError, match="has no labels"):
    check_source(src, resolution=4, channels=1, num_classes=10)
  (tmp_path / "empty").mkdir()
  with pytest.raises(JaxdiffError, match="empty"):
    check_source(open_source(f"folder:{tmp_path / 'empty'}"), resolution=4, channels=1,
                 num_classes=0)
  with pytest.raises(JaxdiffError, match="does not exist"):
    open_source(f"zip:{tmp_path / 'missing.zip'}")
  (tmp_path / "notzip.zip").write_text("hello")
  with pytest.raises(JaxdiffError, match="neither a folder nor a ZIP"):
    open_source(f"zip:{tmp_path / 'notzip.zip'}")
  mixed = tmp_path / "mixed"
  _write_dataset(mixed, np.zeros((1, 4, 4, 1), np.uint8))
  from PIL import Image
  Image.fromarray(np.zeros((6, 6), np.uint8)).save(mixed / "00000" / "img00000001.png")
  with pytest.raises(JaxdiffError, match="one size"):
    open_source(f"folder:{mixed}").get(np.arange(2))
  partial = tmp_path / "partial"
  _write_dataset(partial, np.zeros((2, 4, 4, 1), np.uint8), labels=[0, 1])
  (partial / "dataset.json").write_text('{"labels": [["00000/img00000000.png", 0]]}')
  with pytest.raises(JaxdiffError, match="no label for"):
    open_source(f"folder:{partial}")


def _pipe(**kw):
  from jaxdiff.data.pipeline import PipelineConfig
  return PipelineConfig(**dict(dict(batch_size=8, seed=1, depth=2), **kw))


def test_batches_yield_the_batch_order_and_reraise():
  from jaxdiff.data.pipeline import Batches
  src = _src(np.arange(40).reshape(40, 1, 1, 1), np.arange(40))
  got = list(Batches(src, _pipe(), 3, 8))
  assert [s for s, _, _ in got] == list(range(3, 8))
  for s, images, labels in got:
    chex.assert_type(images, np.float32)
    chex.assert_type(labels, np.int32)
    np.testing.assert_array_equal(labels, batch_indices(s, 8, 40, seed=1))
    np.testing.assert_array_equal(images[:, 0, 0, 0], labels)

  class Broken:
    name, resolution, channels, num_classes = "broken", 1, 1, 0
    def __len__(self):
      return 4
    def get(self, idx):
      raise JaxdiffError("disk gone")
  it = Batches(Broken(), _pipe(batch_size=2, seed=0), 0, 2)
  with pytest.raises(JaxdiffError, match="disk gone"):
    next(it)
  it.close()


def test_batches_resume_from_saved_state_or_step():
  """The state saved after k batches continues where the stream was; so does starting at k;
  a state from another pipeline (here another seed) is ignored, not applied."""
  from jaxdiff.data.pipeline import Batches
  src = _src(np.arange(40).reshape(40, 1, 1, 1), np.arange(40))
  it = Batches(src, _pipe(), 2, 12)
  for _ in range(4):
    next(it)
  state = json.loads(json.dumps(it.state()))          # it travels as JSON in the checkpoint meta
  rest = [labels for _, _, labels in it]
  from_state = Batches(src, _pipe(), 6, 12, resume=state)
  from_step = Batches(src, _pipe(), 6, 12)
  assert from_state._offset == 2 and from_step._offset == 6  # the state path was taken
  for a, (sa, _, b), (sb, _, c) in zip(rest, from_state, from_step, strict=True):
    assert sa == sb
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  other = Batches(src, _pipe(seed=2), 6, 12, resume=state)
  assert other._offset == 6
  np.testing.assert_array_equal(next(other)[2], batch_indices(6, 8, 40, seed=2))


def test_worker_processes_give_the_same_batches(tmp_path):
  """data.workers > 0 decodes in grain worker processes, here from a ZIP (reopened per worker)."""
  from PIL import Image
  from jaxdiff.data.pipeline import Batches
  import zipfile
  path = tmp_path / "d.zip"
  with zipfile.ZipFile(path, "w") as z:
    for k in range(12):
      buf = io.BytesIO()
      Image.fromarray(np.full((4, 4, 3), 10 * k, np.uint8)).save(buf, format="PNG")
      z.writestr(f"img{k:08d}.png", buf.getvalue())
  src = open_source(f"zip:{path}")
  threaded = list(Batches(src, _pipe(batch_size=4), 0, 6))
  it = Batches(src, _pipe(batch_size=4, workers=2), 0, 6)
  procs = list(it)
  it.close()
  assert len(procs) == 6
  for (sa, ia, la), (sb, ib, lb) in zip(threaded, procs):
    assert sa == sb
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(la, lb)
  # each image's value names its index: the batch is the stream's indices, decoded
  np.testing.assert_allclose(threaded[0][1][:, 0, 0, 0], 10 * batch_indices(0, 4, 12, 1) / 127.5 - 1)


def test_xflip_doubles_the_dataset_with_mirrors():
  """The reference's --xflip: index i < N is image i, N + i is image i mirrored left-right."""
  from jaxdiff.data import XFlipSource
  from jaxdiff.data.pipeline import Batches
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (5, 3, 4, 2)).astype(np.float32)
  src = _src(images, np.arange(5))
  flipped = XFlipSource(src)
  assert len(flipped) == 10 and flipped.num_classes == 10 and flipped.resolution == 3
  got, labels = flipped.get(np.array([0, 7, 4, 9]))
  np.testing.assert_array_equal(labels, [0, 2, 4, 4])
  np.testing.assert_array_equal(got[0], images[0])
  np.testing.assert_array_equal(got[2], images[4])
  for k, j in ((1, 2), (3, 4)):                       # hand-indexed mirror: column w -> W-1-w
    for w in range(4):
      np.testing.assert_array_equal(got[k][:, w], images[j][:, 3 - w])
  with pytest.raises(IndexError):
    flipped.get(np.array([10]))
  # in the pipeline: an epoch of 10 positions holds each image once plain and once mirrored
  _, epoch, _ = next(Batches(src, _pipe(batch_size=10, xflip=True), 0, 1))
  plain = {i for i in range(5) for e in epoch if np.array_equal(e, images[i])}
  mirrored = {i for i in range(5) for e in epoch if np.array_equal(e, images[i][:, ::-1])}
  assert plain == mirrored == set(range(5))
