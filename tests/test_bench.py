import json

import pytest

from conftest import DIGITS, TINY, run_main


def test_bench_usage_errors(capsys):
  code, _, err = run_main(capsys, "bench", "--config", DIGITS, "--steps", "0")
  assert code == 2 and "--steps must be at least 1" in err
  code, _, err = run_main(capsys, "bench", "--config", DIGITS, "--batch", "12",
                          "--config.training.grad_accum=8")
  assert code == 2 and "not divisible by devices x grad_accum" in err


@pytest.mark.slow
def test_bench_json_keys(capsys):
  code, out, err = run_main(capsys, "bench", "--config", DIGITS, "--json", "--batch", "8",
                            "--steps", "2", *[o for o in TINY if "batch_size" not in o],
                            "--config.sampler.solver=heun")
  assert code == 0, err[-2000:]
  result = json.loads(out)
  for key in ("train_img_per_s", "sample_img_per_s", "compile_s"):
    assert isinstance(result[key], float) and result[key] > 0
  assert result["batch"] == 8 and result["devices"] >= 1 and result["steps"] == 2
  assert result["nfe"] == 2 * 3 - 1                      # Heun, sampler.num_steps=3 from TINY


@pytest.mark.slow
def test_bench_multistage_uses_the_per_stage_dispatch(capsys):
  import os

  from conftest import ROOT
  small = ["--config.model.model_channels=8", "--config.model.decoder_channels=(8,8,4)",
           "--config.model.channel_mult=(1,)", "--config.model.num_blocks=1",
           "--config.model.attn_resolutions=()", "--config.sampler.num_steps=3"]
  code, out, err = run_main(capsys, "bench", "--config",
                            os.path.join(ROOT, "configs", "digits_multistage.py"),
                            "--json", "--batch", "8", "--steps", "2", *small)
  assert code == 0, err[-2000:]
  result = json.loads(out)
  assert result["train_img_per_s"] > 0 and result["sample_img_per_s"] > 0
  assert result["train_temp_mb"] is None  # one program per stage: no single buffer plan
