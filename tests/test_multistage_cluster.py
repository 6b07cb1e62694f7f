"""Timestep clustering: Algorithm 1 on hand-made similarity curves, ε* against NumPy float64,
the baselines' closed forms, and `jaxdiff cluster` on the digits."""

import json

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.cli import main
from jaxdiff.multistage import cluster


def test_optimal_eps_matches_numpy_float64():
  rng = np.random.default_rng(0)
  data = rng.uniform(-1, 1, (7, 2, 2, 1)).astype(np.float32)
  y = data[[1, 4]]
  eps = rng.standard_normal(y.shape).astype(np.float32)
  sigmas = np.array([0.05, 0.7, 5.0])
  got = cluster.optimal_eps(data, jnp.asarray(y), jnp.asarray(eps), sigmas)
  chex.assert_shape(got, (3, 2, 2, 2, 1))
  chex.assert_type(got, jnp.float32)
  d = data.reshape(7, -1).astype(np.float64)
  for i, s in enumerate(sigmas):
    x = (y + s * eps).reshape(2, -1).astype(np.float64)
    logw = -((x[:, None] - d[None]) ** 2).sum(-1) / (2 * s * s)
    w = np.exp(logw - logw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    expect = ((x - w @ d) / s).reshape(y.shape)
    np.testing.assert_allclose(np.asarray(got[i]), expect, rtol=2e-4, atol=2e-4)


def test_algorithm1_on_hand_made_similarities():
  # 20 grid points; ε* equals the low end on points 0..5 and the high end on 14..19 (identical
  # elsewhere to neither): the running means stay ≥ α = 0.9 exactly up to 5 and from 14.
  n, pix = 20, 100
  e = np.zeros((n, 1, pix))
  e[:6] = 0.0
  e[6:14] = np.arange(1, 9)[:, None, None] * 10.0   # far from both ends
  e[14:] = 1000.0
  sig = np.exp(np.linspace(np.log(0.01), np.log(100), n))
  b = cluster.boundaries_from_similarity(sig, e, 3, alpha=0.9, eta=0.5)
  np.testing.assert_allclose(b, [np.sqrt(sig[5] * sig[6]), np.sqrt(sig[13] * sig[14])])
  # Two stages: the crossing of the two curves; four: the middle interval is split again.
  b2 = cluster.boundaries_from_similarity(sig, e, 2, alpha=0.9, eta=0.5)
  assert len(b2) == 1 and sig[0] < b2[0] < sig[-1]
  b4 = cluster.boundaries_from_similarity(sig, e, 4, alpha=0.9, eta=0.5)
  assert len(b4) == 3 and np.all(np.diff(b4) > 0)


def test_baselines_closed_forms():
  smin, smax = 0.002, 80.0
  t = cluster.timestep_boundaries(3, sigma_min=smin, sigma_max=smax)
  # σ_VP(t) = sqrt(exp(β_d t²/2 + β_min t) − 1) evaluated independently at equally spaced t.
  def t_of(s):
    return (np.sqrt(0.1**2 + 2 * 19.9 * np.log(1 + s * s)) - 0.1) / 19.9
  ts = np.linspace(t_of(smin), t_of(smax), 4)[1:3]
  np.testing.assert_allclose(t, np.sqrt(np.exp(0.5 * 19.9 * ts**2 + 0.1 * ts) - 1), rtol=1e-10)
  s = cluster.snr_boundaries(3, sigma_min=smin, sigma_max=smax)
  r = (smax / smin) ** (1 / 3)
  np.testing.assert_allclose(s, [smin * r, smin * r * r], rtol=1e-10)


@pytest.mark.parametrize("method", ["optimal", "timestep", "snr"])
def test_cli_digits_three_stages(method, capsys):
  argv = ["cluster", "--config", "configs/digits.py", "--stages", "3", "--method", method, "--json"]
  if method == "optimal":
    argv += ["--samples", "64", "--grid", "32"]
  assert main(argv) == 0
  out = json.loads(capsys.readouterr().out)
  b = out["boundaries_sigma"]
  assert len(b) == 2 and 0.002 < b[0] < b[1] < 80.0


def test_cli_rejects_one_stage(capsys):
  assert main(["cluster", "--config", "configs/digits.py", "--stages", "1"]) == 2
  assert "at least 2" in capsys.readouterr().err
