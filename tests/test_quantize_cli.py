"""`jaxdiff quantize`: a tiny trained run -> a quantized workdir that load / sample use; bad input
refused with one line, exit 2, nothing written."""

import json

import numpy as np
import pytest

from conftest import DIGITS, TINY, run_main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from jaxdiff.build import run_training
  from jaxdiff.config import load_config
  workdir = tmp_path_factory.mktemp("run") / "w"
  # Trained in this process (no process start); `jaxdiff quantize` below runs through the CLI.
  assert run_training(load_config(DIGITS, [*TINY, "--config.training.steps=2"]),
                      str(workdir))["steps"] == 2
  return workdir


@pytest.mark.slow
def test_quantize_w8_is_a_workdir_load_and_sample_use(trained, tmp_path, capsys):
  import jax.numpy as jnp

  import jaxdiff
  from jaxdiff import quant
  out = tmp_path / "q8"
  code, stdout, err = run_main(capsys, "quantize", "--workdir", str(trained), "--out", str(out),
                               "--bits", "8", "--json")
  assert code == 0, err
  summary = json.loads(stdout)
  assert summary["name"] == "W8" and summary["integer_fraction"] > 0.9
  assert summary["bytes_quantized"] < summary["bytes_float"] / 3  # int8 weights + f32 scales
  rec = json.loads((out / "config.json").read_text())["quant"]
  assert rec["bits"] == 8 and rec["group_size"] is None and "quantized/" in rec["stored"]
  # The stored weights are what quantizing the source's EMA weights gives.
  src, q = jaxdiff.load(str(trained)), jaxdiff.load(str(out))
  _, qp = quant.quantize(src.graphdef, src.params, quant.QuantSpec(8), shape=src.shape,
                         label_dim=src.label_dim)
  want = quant.dequantize_params(src.params, qp)
  x = np.random.default_rng(0).normal(size=(2, *src.shape)).astype(np.float32)
  a = q.denoise(x, [0.5, 5.0], labels=[1, 2])
  b = src.denoise(x, [0.5, 5.0], labels=[1, 2])
  from jaxdiff.model import Model
  c = Model(src.exp, src.graphdef, want).denoise(x, [0.5, 5.0], labels=[1, 2])
  np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-5)
  # load gives the qwix network on the stored integers, not floats.
  assert quant.integer_fraction(q.params) > 0.9
  ints = [v for v in __import__("jax").tree.leaves(q.params) if v.dtype == jnp.int8]
  assert ints and q.graphdef != src.graphdef
  assert 0 < float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 0.05
  code, _, err = run_main(capsys, "sample", "--workdir", str(out), "--num", "2", "--out",
                          str(tmp_path / "s.npz"))
  assert code == 0, err
  assert np.load(tmp_path / "s.npz")["images"].shape == (2, *src.shape)


@pytest.mark.slow
def test_quantize_w8a8_calibrated_on_the_sampler_is_a_workdir(trained, tmp_path, capsys):
  """--activations: the record names the calibration (one batch per network evaluation of the
  run's own sampler); load gives the qwix W8A8 network on the stored integers and static scales,
  equal to quantizing in memory with the same calibration set; sample and eval --workdir run."""
  import jaxdiff
  from jaxdiff import quant, sampling
  from jaxdiff.cli.quantize import calibration_set
  out = tmp_path / "q8a8"
  code, stdout, err = run_main(capsys, "quantize", "--workdir", str(trained), "--out", str(out),
                               "--bits", "8", "--activations", "--calib-num", "4", "--json")
  assert code == 0, err
  summary = json.loads(stdout)
  assert summary["name"] == "W8A8" and summary["activations"] is True
  rec = json.loads((out / "config.json").read_text())["quant"]
  cal = rec["calibration"]
  assert (cal["solver"], cal["steps"], cal["num"], cal["seed"]) == ("ipndm", 3, 4, 0)
  assert cal["nfe"] == sampling.nfe("ipndm", 3) == len(cal["sigmas"])
  assert cal["sigmas"][0] == pytest.approx(80.0) and cal["sigmas"] == sorted(cal["sigmas"])[::-1]
  src, q = jaxdiff.load(str(trained)), jaxdiff.load(str(out))
  _, calib_fn = calibration_set(src, 4, 0)
  qg, qp = quant.quantize(src.graphdef, src.params, quant.QuantSpec(8, activations=True),
                          calib_fn, shape=src.shape, label_dim=src.label_dim)
  from jaxdiff.model import Model
  x = np.random.default_rng(0).normal(size=(2, *src.shape)).astype(np.float32)
  want = Model(src.exp, qg, qp).denoise(x, [0.5, 5.0], labels=[1, 2])
  got = q.denoise(x, [0.5, 5.0], labels=[1, 2])
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  assert any("_lhs_scale" in "/".join(map(str, p)) for p, _ in
             __import__("flax").nnx.to_flat_state(q.params))
  from jaxdiff.cli import main  # in process: the quantized network is already compiled
  assert main(["sample", "--workdir", str(out), "--num", "2", "--out",
               str(tmp_path / "s.npz")]) == 0
  assert np.load(tmp_path / "s.npz")["images"].shape == (2, *src.shape)
  assert main(["eval", "--workdir", str(out), "--num", "4", "--metric", "accuracy",
               "--samples", str(tmp_path / "e.npz")]) == 0
  assert np.load(tmp_path / "e.npz")["images"].shape == (4, *src.shape)


@pytest.mark.parametrize("args,msg", [
    (["--bits", "4", "--activations"], "--activations needs --bits 8"),
    (["--bits", "3"], "--bits 3: use 8 or 4"),
    (["--bits", "4", "--group-size", "4"], "10 input channels of layer 'map_label'"),
    (["--bits", "4", "--group-size", "0"], "positive integer"),
])
def test_bad_options_refused(trained, tmp_path, args, msg, capsys):
  out = tmp_path / "q"
  code, _, err = run_main(capsys, "quantize", "--workdir", str(trained), "--out", str(out), *args)
  assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
  assert not out.exists()


def test_no_checkpoint_and_nonempty_out_refused(trained, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text((trained / "config.json").read_text())
  code, _, err = run_main(capsys, "quantize", "--workdir", str(empty), "--out", str(tmp_path / "q"),
                          "--bits", "8")
  assert code == 2 and "no checkpoint" in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "q").exists()
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "keep.txt").write_text("mine")
  code, _, err = run_main(capsys, "quantize", "--workdir", str(trained), "--out", str(busy),
                          "--bits", "8")
  assert code == 2 and "not empty" in err, err
  assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
  assert (busy / "keep.txt").read_text() == "mine"
