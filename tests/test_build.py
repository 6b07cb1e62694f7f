import pytest

from conftest import DIGITS
from jaxdiff import build, losses, precond
from jaxdiff.config import load_config
from jaxdiff.errors import JaxdiffError


def test_constants_reach_the_chosen_classes():
  cfg = load_config(DIGITS, ["--config.loss.P_mean=-0.5", "--config.precond.sigma_data=0.25"])
  loss = build.make_loss(cfg)
  assert isinstance(loss, losses.EDMLoss)
  assert (loss.P_mean, loss.P_std, loss.sigma_data) == (-0.5, 1.2, 0.25)  # σ_data follows precond
  assert build.make_precond(cfg) == precond.EDMPrecond(sigma_data=0.25)


def test_switching_name_ignores_the_other_choices_constants():
  cfg = load_config(DIGITS, ["--config.precond.name=vp", "--config.loss.name=vp"])
  assert isinstance(build.make_precond(cfg), precond.VPPrecond)
  assert isinstance(build.make_loss(cfg), losses.VPLoss)


def test_key_no_choice_takes_is_refused():
  cfg = load_config(DIGITS)
  cfg.unlock()
  cfg.loss.p_mean = -1.0  # lower-case: not EDMLoss's P_mean
  with pytest.raises(JaxdiffError, match=r"\['p_mean'\]"):
    build.make_loss(cfg)


def test_sampler_range_is_clipped_to_the_precond():
  edm = build.experiment(load_config(DIGITS)).sampling.kwargs()
  assert (edm["sigma_min"], edm["sigma_max"]) == (0.002, 80.0)
  ve = build.experiment(load_config(DIGITS, ["--config.precond.name=ve"])).sampling.kwargs()
  assert ve["sigma_min"] == 0.02  # VE's network never saw σ below 0.02
  iddpm = build.experiment(load_config(DIGITS, ["--config.precond.name=iddpm"])).sampling.kwargs()
  assert iddpm["sigma_min"] == pytest.approx(float(precond.IDDPMPrecond().sigma_min))
