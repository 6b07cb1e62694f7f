"""Few-step sampling from the command line: `sample --solver consistency`, `schedule` (GITS) and
`sample --schedule`, on tiny trained workdirs (shared by the tests of this module)."""

import json
import os

import jax
import numpy as np
import pytest

import jaxdiff
from conftest import DIGITS, ROOT, TINY
from jaxdiff import timesteps
from jaxdiff.build import run_training as train
from jaxdiff.cli import main
from jaxdiff.config import load_config
from jaxdiff.denoiser import make_denoiser
from jaxdiff.images import to_uint8
from jaxdiff.model import sample_keys

CONSISTENCY = os.path.join(ROOT, "configs", "digits_consistency.py")


@pytest.fixture(scope="module")
def edm(tmp_path_factory):
  w = tmp_path_factory.mktemp("fs") / "edm"
  train(load_config(DIGITS, TINY + ["--config.training.steps=2"]), str(w))
  return str(w)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
  w = tmp_path_factory.mktemp("fs") / "ct"
  train(load_config(CONSISTENCY, TINY + ["--config.training.steps=2", "--config.consistency.s0=2",
                                         "--config.consistency.s1=8"]), str(w))
  return str(w)


def _cli(capsys, *argv):
  code = main(list(argv))
  err = capsys.readouterr().err
  return code, err


def _error_line(err):
  lines = [l for l in err.splitlines() if "error:" in l]
  assert len(lines) == 1, err
  return lines[0]


@pytest.mark.slow
def test_one_step_consistency_sampling_is_one_evaluation(ct, tmp_path, capsys):
  model = jaxdiff.load(ct)
  got = model.sample(6, seed=4, solver="consistency", steps=1)
  # By hand: x = f(80·z, 80) with the sample's own latent z, f = the loaded consistency function.
  keys = sample_keys(4, 0, 6)
  z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (8, 8, 1)))(keys)
  f = make_denoiser(model.graphdef, model.params, model.precond)
  want = to_uint8(f(z * 80.0, np.full(6, 80.0, np.float32),
                    class_labels=jax.nn.one_hot(np.arange(6) % 10, 10)))
  np.testing.assert_array_equal(got, want)
  out = str(tmp_path / "s.npz")
  code, err = _cli(capsys, "sample", "--workdir", ct, "--num", "6", "--seed", "4", "--out", out,
                   "--solver", "consistency", "--steps", "1")
  assert code == 0, err
  np.testing.assert_array_equal(np.load(out)["images"], got)


@pytest.mark.slow
def test_multistep_uses_the_configs_or_the_given_noise_levels(ct, tmp_path, capsys):
  model = jaxdiff.load(ct)
  a = model.sample(6, seed=1, solver="consistency", steps=2)  # config: (80, 0.821)
  b = model.sample(6, seed=1, solver="consistency", sigmas=[80.0, 0.821])
  c = model.sample(6, seed=1, solver="consistency", sigmas=[80.0, 5.0])
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  out = str(tmp_path / "s.npz")
  code, err = _cli(capsys, "sample", "--workdir", ct, "--num", "6", "--seed", "1", "--out", out,
                   "--sigmas", "80,5")
  assert code == 0, err  # the config's solver (consistency), steps from the levels given
  np.testing.assert_array_equal(np.load(out)["images"], c)


@pytest.mark.parametrize("which, args, match", [
    ("edm", ["--solver", "consistency", "--steps", "1"], "needs a consistency model"),
    ("ct", ["--solver", "consistency", "--steps", "0"], "--steps must be >= 1"),
    ("ct", ["--sigmas", "80,90"], "strictly decreasing"),
])
def test_bad_few_step_requests_are_one_line_errors(which, args, match, edm, ct, tmp_path, capsys):
  w = {"edm": edm, "ct": ct}[which]
  code, err = _cli(capsys, "sample", "--workdir", w, "--num", "2", "--out",
                   str(tmp_path / "s.npz"), *args)
  assert code == 2 and match in _error_line(err)
  assert not os.path.exists(tmp_path / "s.npz")


@pytest.fixture(scope="module")
def schedule_file(edm, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("sched") / "ipndm4.json")
  code = main(["schedule", "--workdir", edm, "--solver", "ipndm", "--nfe", "4", "--num", "16",
               "--fine-steps", "12", "--out", out])
  assert code == 0
  return out


@pytest.mark.slow
def test_schedule_records_the_gits_grid(edm, schedule_file):
  rec = json.load(open(schedule_file))
  recorded = os.path.join(edm, "schedules", "gits_ipndm_nfe4.json")
  assert json.load(open(recorded)) == rec
  assert rec["solver"] == "ipndm" and rec["nfe"] == 4 and rec["num_steps"] == 4
  sig = np.asarray(rec["sigmas"])
  assert sig.shape == (5,) and sig[-1] == 0 and np.all(np.diff(sig) < 0)
  # The same search called directly on the loaded model with the same latents and labels.
  model = jaxdiff.load(edm)
  z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (8, 8, 1)))(
      sample_keys(0, 0, 16))
  den = make_denoiser(model.graphdef, model.params, model.precond)
  onehot = jax.nn.one_hot(np.arange(16) % 10, 10)
  want, info = timesteps.gits_sigmas(lambda x, s: den(x, s, class_labels=onehot), z, "ipndm", 4,
                                     fine_steps=12)
  np.testing.assert_array_equal(sig, want)
  assert rec["indices"] == info["indices"]
  # Every point is on the fine grid, first σ_max.
  fine = timesteps.fine_grid(12)
  np.testing.assert_array_equal(sig, fine[rec["indices"]])
  assert rec["indices"][0] == 0 and rec["indices"][-1] == 12


@pytest.mark.slow
def test_sample_with_a_schedule(edm, schedule_file, tmp_path, capsys):
  out = str(tmp_path / "s.npz")
  code, err = _cli(capsys, "sample", "--workdir", edm, "--num", "4", "--out", out, "--schedule",
                   schedule_file)
  assert code == 0, err
  sig = json.load(open(schedule_file))["sigmas"]
  want = jaxdiff.load(edm).sample(4, solver="ipndm", steps=4, sigmas=sig)
  np.testing.assert_array_equal(np.load(out)["images"], want)
  karras = jaxdiff.load(edm).sample(4, solver="ipndm", steps=4)
  assert not np.array_equal(karras, want)  # the grid did change the sampler


@pytest.mark.slow
def test_bad_schedules_are_one_line_errors(edm, ct, schedule_file, tmp_path, capsys):
  out = str(tmp_path / "s.npz")
  base = ["sample", "--workdir", edm, "--num", "2", "--out", out, "--schedule", schedule_file]
  code, err = _cli(capsys, *base, "--steps", "3")
  assert code == 2 and "3 steps need 4" in _error_line(err)
  code, err = _cli(capsys, *base, "--solver", "heun")
  assert code == 2 and "searched for solver 'ipndm'" in _error_line(err)
  bad = tmp_path / "bad.json"
  rec = json.load(open(schedule_file))
  rec["sigmas"] = [1.0, 2.0, 0.5, 0.1, 0.0]
  bad.write_text(json.dumps(rec))
  code, err = _cli(capsys, "sample", "--workdir", edm, "--num", "2", "--out", out, "--schedule",
                   str(bad))
  assert code == 2 and "strictly decreasing" in _error_line(err)
  assert not os.path.exists(out)
  code, err = _cli(capsys, "schedule", "--workdir", ct, "--solver", "ipndm", "--nfe", "4")
  assert code == 2 and "consistency model" in _error_line(err)
  code, err = _cli(capsys, "schedule", "--workdir", edm, "--solver", "consistency", "--nfe", "2")
  assert code == 2 and "ODE solvers" in _error_line(err)
