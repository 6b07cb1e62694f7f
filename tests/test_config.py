import pytest

from conftest import DIGITS
from jaxdiff.config import from_json, load_config, to_json
from jaxdiff.errors import JaxdiffError


def test_overrides_apply_with_types():
  cfg = load_config(DIGITS, ["--config.training.steps=7", "--config.model.channel_mult=(1,2,2)",
                             "--config.training.lr=0.5"])
  assert cfg.training.steps == 7 and isinstance(cfg.training.steps, int)
  assert tuple(cfg.model.channel_mult) == (1, 2, 2)
  assert cfg.training.lr == 0.5


def test_unknown_key_is_one_line_with_suggestion():
  with pytest.raises(JaxdiffError) as e:
    load_config(DIGITS, ["--config.training.stepz=3"])
  msg = str(e.value)
  assert "\n" not in msg and "training.stepz" in msg and "training.steps" in msg


def test_bad_value_type():
  with pytest.raises(JaxdiffError) as e:
    load_config(DIGITS, ["--config.training.steps=abc"])
  assert "\n" not in str(e.value) and "training.steps" in str(e.value)


def test_missing_file():
  with pytest.raises(JaxdiffError, match="does not exist"):
    load_config("configs/nope.py")


def test_json_round_trip():
  cfg = load_config(DIGITS)
  back = from_json(to_json(cfg))
  assert back.training.steps == cfg.training.steps
  assert list(back.model.channel_mult) == list(cfg.model.channel_mult)
  assert back.sampler.s_max == float("inf")
