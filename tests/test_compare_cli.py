"""`jaxdiff compare` through the CLI on tiny trained workdirs: a model against itself scores 1.0,
shuffled latents give the different-noise floor (recomputed here from the images), and the
refusals (label count, stochastic sampler) are one line with exit 2."""

import json

import numpy as np
import pytest

from conftest import DIGITS, TINY, run_cli, run_main
from jaxdiff.cli import main
from jaxdiff.cli.compare import shuffle_pairs


def test_shuffle_pairs_keeps_labels():
  labels = np.arange(50) % 7
  perm = shuffle_pairs(labels, 50, 0)
  assert sorted(perm) == list(range(50)) and np.all(labels[perm] == labels)
  assert np.mean(perm == np.arange(50)) < 0.5  # most pairs really get other latents
  np.testing.assert_array_equal(perm, shuffle_pairs(labels, 50, 0))
  free = shuffle_pairs(None, 50, 1)
  assert sorted(free) == list(range(50)) and not np.all(free == np.arange(50))


def _train(root, name, *extra):
  workdir = root / name
  # Heun: the deterministic EDM sampler, and the one S_churn applies to (the digits default
  # samples with iPNDM). In this process (what `jaxdiff train` runs, without a process start
  # each); the comparisons below go through the CLI.
  from jaxdiff.build import run_training
  from jaxdiff.config import load_config
  summary = run_training(load_config(DIGITS, [*TINY, "--config.training.steps=2",
                                              "--config.sampler.solver=heun", *extra]), str(workdir))
  assert summary["steps"] == 2
  return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("compare")
  return {"a": _train(root, "a"), "b": _train(root, "b", "--config.training.seed=1"),
          "uncond": _train(root, "u", "--config.data.num_classes=0")}


def _json(capsys, *argv):
  assert main(["compare", *argv, "--json"]) == 0
  out = capsys.readouterr().out
  assert len(out.strip().splitlines()) == 1
  return json.loads(out)


def _pearson(a, b):
  """Independent similarity: NumPy's correlation coefficient, pair by pair."""
  a = a.reshape(len(a), -1).astype(np.float64)
  b = b.reshape(len(b), -1).astype(np.float64)
  return np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])


@pytest.mark.slow  # three tiny trainings through the CLI, then sampling
def test_model_against_itself_scores_one_and_json_is_one_object(runs, tmp_path):
  out = tmp_path / "pairs.npz"
  code, stdout, err = run_cli("compare", "--workdir", str(runs["a"]), "--workdir", str(runs["a"]),
                              "--num", "40", "--seed", "3", "--json", "--out", str(out))
  assert code == 0, err
  report = json.loads(stdout)  # stdout is exactly one JSON object
  assert report["score"] == 1.0 and report["mean_similarity"] == pytest.approx(1.0)
  assert report["num"] == 40 and sum(report["hist"]) == 40 and report["threshold"] == 0.9
  assert report["solver"] == ["heun", "heun"] and report["steps"] == [3, 3]
  pairs = np.load(out)
  np.testing.assert_array_equal(pairs["images_a"], pairs["images_b"])
  np.testing.assert_array_equal(pairs["labels"], np.arange(40) % 10)


@pytest.mark.slow  # three tiny trainings through the CLI, then sampling
def test_shuffled_latents_floor_and_other_seed(runs, tmp_path, capsys):
  a = str(runs["a"])
  out = tmp_path / "p.npz"
  same = _json(capsys, "--workdir", a, "--workdir", a, "--num", "60", "--out", str(out))
  floor = _json(capsys, "--workdir", a, "--workdir", a, "--num", "60", "--shuffle")
  images = np.load(out)["images_a"]
  perm = shuffle_pairs(np.arange(60) % 10, 60, 0)
  assert np.all(perm % 10 == np.arange(60) % 10) and not np.all(perm == np.arange(60))
  sim = _pearson(images, images[perm])
  # The CLI's floor is the different-noise, same-label figure, recomputed independently.
  assert floor["score"] == pytest.approx(np.mean(sim > 0.9))
  assert floor["mean_similarity"] == pytest.approx(np.mean(sim), abs=1e-9)
  assert same["score"] == 1.0 and floor["mean_similarity"] < same["mean_similarity"]
  # Another training seed: a valid score, and the latents / labels are the same ones.
  other = _json(capsys, "--workdir", a, "--workdir", str(runs["b"]), "--num", "60")
  assert 0.0 <= other["score"] <= 1.0 and other["num"] == 60
  # B at other steps: the steps are B's own.
  steps = _json(capsys, "--workdir", a, "--workdir", a, "--num", "20", "--steps-b", "6")
  assert steps["steps"] == [3, 6] and steps["mean_similarity"] < 1.0


@pytest.mark.slow  # three tiny trainings through the CLI, then sampling
def test_text_report(runs, capsys):
  assert main(["compare", "--workdir", str(runs["a"]), "--workdir", str(runs["a"]),
               "--num", "10"]) == 0
  out = capsys.readouterr().out
  assert "reproducibility score 1.0000: 10 of 10 pairs" in out and "mean similarity" in out
  assert len([line for line in out.splitlines() if line.startswith("  [")]) == 20


def _one_line_error(code, err, *needles):
  assert code == 2, err
  lines = [line for line in err.strip().splitlines() if line.startswith("jaxdiff")]
  assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
  for n in needles:
    assert n in lines[0], lines[0]


@pytest.mark.slow  # three tiny trainings through the CLI, then sampling
def test_refusals(runs, capsys):
  a, u = str(runs["a"]), str(runs["uncond"])
  code, _, err = run_main(capsys, "compare", "--workdir", a, "--workdir", u, "--num", "4")
  _one_line_error(code, err, "10 classes", "0", "label count")
  assert main(["compare", "--workdir", a, "--workdir", a, "--num", "4",
               "--solver", "euler_ancestral"]) == 2
  err = capsys.readouterr().err
  assert "deterministic" in err and "--allow-stochastic" in err and len(err.strip().splitlines()) == 1
  assert main(["compare", "--workdir", a, "--num", "4"]) == 2
  assert "exactly twice" in capsys.readouterr().err
  # Asking for S_churn on B runs it (the stochastic-vs-ODE low point).
  report = _json(capsys, "--workdir", a, "--workdir", a, "--num", "10", "--s-churn", "40")
  assert report["s_churn"] == [0.0, 40.0] and report["mean_similarity"] < 1.0
