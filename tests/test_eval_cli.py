"""`jaxdiff eval` end to end on small npz files the tests write."""

import json

import numpy as np
import pytest

from jaxdiff.cli import main
from jaxdiff.eval import digits_metric as dm


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
  mp = pytest.MonkeyPatch()
  mp.setenv("JAXDIFF_CACHE", str(tmp_path_factory.mktemp("jaxdiff_cache")))
  mp.delenv("JAXDIFF_INCEPTION", raising=False)
  yield
  mp.undo()


@pytest.fixture(scope="module")
def real_npz(tmp_path_factory):
  images, labels = dm.real_digits()
  _, held = dm.split_indices(len(images))
  path = tmp_path_factory.mktemp("samples") / "held.npz"
  np.savez(path, images=images[held], labels=labels[held])
  return str(path), images[held], labels[held]


def test_eval_json_digits_metrics(real_npz, capsys):
  path, images, labels = real_npz
  assert main(["eval", "--samples", path, "--metric", "fdd,accuracy", "--json"]) == 0
  out, err = capsys.readouterr()
  result = json.loads(out)  # exactly one JSON object on stdout
  assert list(result) == ["fdd", "accuracy"]
  assert result["accuracy"] == pytest.approx(dm.accuracy(images, labels))
  assert result["fdd"] == pytest.approx(dm.fdd(images))
  assert result["accuracy"] >= 0.9 and "floor" in err


def test_eval_plain_output_and_metric_order(real_npz, capsys):
  path, _, _ = real_npz
  assert main(["eval", "--samples", path, "--metric", "accuracy"]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1 and out[0].startswith("accuracy: ")


def test_accuracy_without_labels_is_a_clear_error(tmp_path, capsys):
  p = tmp_path / "nolabels.npz"
  np.savez(p, images=np.zeros((5, 8, 8, 1), np.uint8))
  assert main(["eval", "--samples", str(p), "--metric", "accuracy", "--json"]) == 2
  out, err = capsys.readouterr()
  assert out == "" and "accuracy needs class labels" in err


@pytest.mark.parametrize("argv,message", [
    (["--metric", "fdd"], "nothing to evaluate"),
    (["--metric", "fdd,bogus", "--samples", "x.npz"], "unknown metric"),
    (["--metric", "fid", "--samples", "x.npz"], "pt_inception-2015-12-05-6726825d.pth"),
    (["--metric", "fdd", "--samples", "/nonexistent/s.npz"], "not found"),
    (["--metric", "fdd", "--workdir", "/tmp"], "--num"),
])
def test_usage_errors(argv, message, capsys):
  assert main(["eval", *argv]) == 2
  assert message in capsys.readouterr().err


def test_fid_needs_ref(tmp_path, capsys, monkeypatch):
  weights = tmp_path / "w.npz"
  weights.write_bytes(b"")  # exists: the check for --ref comes before reading it
  p = tmp_path / "s.npz"
  np.savez(p, images=np.zeros((5, 16, 16, 3), np.uint8))
  assert main(["eval", "--samples", str(p), "--metric", "fid", "--inception", str(weights)]) == 2
  assert "--ref" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_inception_metrics_random_weights(tmp_path, capsys):
  # The whole Inception path with random weights (values meaningless; minutes on a small CPU).
  from flax import nnx
  from jaxdiff.eval import inception as inc
  from jaxdiff.pytree import flatten
  net = inc.random_inception(0)
  weights = {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(nnx.state(net))).items()}
  wpath = tmp_path / "w.npz"
  np.savez(wpath, **weights)
  rng = np.random.default_rng(0)
  fake, real = tmp_path / "fake.npz", tmp_path / "real.npz"
  # 8 images, one batch of 8 per set: each Inception forward at 299x299 costs seconds here.
  np.savez(fake, images=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
  np.savez(real, images=rng.integers(0, 120, (8, 16, 16, 1), dtype=np.uint8))
  stats = tmp_path / "ref.npz"
  assert main(["eval", "--samples", str(real), "--metric", "fid", "--ref", str(real),
               "--inception", str(wpath), "--save-ref", str(stats), "--batch", "8"]) == 0
  assert float(capsys.readouterr().out.split(":")[1]) == pytest.approx(0.0, abs=1e-6)
  assert main(["eval", "--samples", str(fake), "--metric", "fid,kid,precision,recall",
               "--ref", str(stats), "--inception", str(wpath), "--json", "--batch", "8"]) == 0
  result = json.loads(capsys.readouterr().out)
  assert list(result) == ["fid", "kid", "precision", "recall"]
  assert result["fid"] > 0 and 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1


class _FakeModel:
  """Stands in for `jaxdiff.load(workdir)`: returns real held-out digits as its 'samples'."""
  label_dim = 10

  def __init__(self, images, labels):
    self.images, self.labels, self.calls = images, labels, []

  def sample_with_labels(self, num, seed=0, progress=False, **kw):
    self.calls.append((num, seed))
    return self.images[:num], self.labels[:num]


def test_workdir_samples_first_and_writes_samples(real_npz, tmp_path, monkeypatch, capsys):
  import jaxdiff
  _, images, labels = real_npz
  fake = _FakeModel(images, labels)
  monkeypatch.setattr(jaxdiff, "load", lambda workdir, ema=True: fake)
  out_npz = tmp_path / "drawn.npz"
  assert main(["eval", "--workdir", str(tmp_path), "--num", "200", "--seed", "3",
               "--samples", str(out_npz), "--metric", "accuracy", "--json"]) == 0
  assert fake.calls == [(200, 3)]
  result = json.loads(capsys.readouterr().out)
  assert result["accuracy"] == pytest.approx(dm.accuracy(images[:200], labels[:200]))
  with np.load(out_npz) as z:
    np.testing.assert_array_equal(z["images"], images[:200])
    assert z["labels"].dtype == np.int32
