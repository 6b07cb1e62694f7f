"""GITS time steps: DP optimality by brute force, the teacher/cost against NumPy float64, and the
optimized grid against the Karras grid at equal NFE on an exact mixture."""

import itertools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmm_reference as R
from jaxdiff import exact, sampling, timesteps
from jaxdiff.errors import JaxdiffError
from test_sampling import GMM, LAT, D_np


def brute_force(C, K):
  M = C.shape[0] - 1
  best = (np.inf, None)
  for mid in itertools.combinations(range(1, M), K - 1):
    p = (0,) + mid + (M,)
    c = sum(C[a, b] for a, b in zip(p[:-1], p[1:]))
    best = min(best, (c, p))
  return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_is_optimal_against_brute_force(seed):
  rng = np.random.default_rng(seed)
  M = 8
  C = np.triu(rng.exponential(size=(M + 1, M + 1)), 1)
  C[np.tril_indices(M + 1)] = np.inf
  for K in range(1, M + 1):
    path, total = timesteps.min_cost_path(C, K)
    want, want_path = brute_force(C, K)
    assert total == pytest.approx(want, rel=1e-12)
    assert tuple(path) == want_path
    assert len(path) == K + 1 and path[0] == 0 and path[-1] == M and np.all(np.diff(path) > 0)
  with pytest.raises(JaxdiffError, match="steps"):
    timesteps.min_cost_path(C, M + 1)


def numpy_teacher(lat, s, r):
  """Heun, r substeps per fine interval (linear in σ^{1/7}), then x = D(x; σ_{M−1})."""
  u = s[:-1] ** (1 / 7)
  x = lat * s[0]
  X, Dx = [], []
  for i in range(len(u)):
    X.append(x.copy())
    Dx.append(D_np(x, s[i]))
    if i == len(u) - 1:
      X.append(Dx[-1])
      break
    ts = [s[i]] + [(u[i] + (u[i + 1] - u[i]) * k / r) ** 7 for k in range(1, r)] + [s[i + 1]]
    for a, b in zip(ts[:-1], ts[1:]):
      d = (x - D_np(x, a)) / a
      xe = x + (b - a) * d
      x = x + (b - a) * 0.5 * (d + (xe - D_np(xe, b)) / b)
  return np.array(X), np.array(Dx)


def numpy_costs(X, Dx, s, heun):
  M = len(s) - 1
  C = np.full((M + 1, M + 1), np.inf)
  for i in range(M):
    for j in range(i + 1, M + 1):
      d = (X[i] - Dx[i]) / s[i]
      x = X[i] + (s[j] - s[i]) * d
      if heun and s[j] > 0:
        x = X[i] + (s[j] - s[i]) * 0.5 * (d + (x - D_np(x, s[j])) / s[j])
      C[i, j] = np.mean(np.linalg.norm(x - X[j], axis=-1))
  return C


@pytest.mark.parametrize("solver,cost", [("ipndm", "euler"), ("heun", "heun")])
def test_gits_matches_a_numpy_search_on_a_tiny_fine_grid(solver, cost):
  fine = 7
  s = R.edm_grid(fine)  # the Karras grid of 7 points, then 0
  np.testing.assert_allclose(timesteps.fine_grid(fine), s, rtol=1e-12)
  lat = jnp.asarray(LAT, jnp.float32)
  X, Dx = timesteps.teacher_trajectory(GMM.denoise, lat, s, substeps=3)
  chex.assert_shape(X, (fine + 1,) + LAT.shape)
  chex.assert_shape(Dx, (fine,) + LAT.shape)
  chex.assert_type(X, jnp.float32)
  Xn, Dn = numpy_teacher(LAT, s, 3)
  np.testing.assert_allclose(np.asarray(X), Xn, rtol=1e-4, atol=1e-4)
  # The teacher with substeps is the sampler's Heun on the finer Karras grid.
  heun = jax.jit(lambda l: sampling.sample(GMM.denoise, l, "heun", 3 * (fine - 1) + 1))(lat)
  np.testing.assert_allclose(np.asarray(X[-1]), np.asarray(heun), rtol=1e-4, atol=1e-4)
  C = timesteps.cost_matrix(GMM.denoise, X, Dx, s, cost)
  Cn = numpy_costs(Xn, Dn, s, cost == "heun")
  np.testing.assert_allclose(C[np.isfinite(Cn)], Cn[np.isfinite(Cn)], rtol=1e-3, atol=1e-5)
  assert np.array_equal(np.isfinite(C), np.isfinite(Cn))
  nfe = 5
  sig, info = timesteps.gits_sigmas(GMM.denoise, lat, solver, nfe, fine_steps=fine,
                                    teacher_substeps=3)
  K = timesteps.steps_for_nfe(solver, nfe)
  total, path = brute_force(Cn, K)
  assert tuple(info["indices"]) == path
  assert info["dp_cost"] == pytest.approx(total, rel=1e-3)
  np.testing.assert_array_equal(sig, s[list(path)])
  assert sampling.nfe(solver, len(sig) - 1) <= nfe


def test_steps_for_nfe():
  assert timesteps.steps_for_nfe("heun", 8) == 4 and sampling.nfe("heun", 4) == 7
  assert timesteps.steps_for_nfe("heun", 7) == 4 and timesteps.steps_for_nfe("heun", 1) == 1
  for s in ("ipndm", "dpmpp_2m", "dpmpp_3m", "unipc", "euler"):
    assert timesteps.steps_for_nfe(s, 6) == 6
  with pytest.raises(JaxdiffError, match="consistency"):
    timesteps.steps_for_nfe("consistency", 2)
  with pytest.raises(JaxdiffError, match="nfe"):
    timesteps.steps_for_nfe("ipndm", 0)
  with pytest.raises(JaxdiffError, match="unknown solver"):
    timesteps.steps_for_nfe("rk4", 4)


@pytest.mark.slow  # ~30 s on the shared CPU: three searches and six compiled solves
def test_optimized_grid_beats_karras_at_equal_nfe():
  g = exact.random_mixture(seed=0, dim=2, num_components=8, spread=1.0, scale=0.25)
  fit = sampling.sample_latents(jax.random.split(jax.random.key(77), 64), (2,))
  lat = sampling.sample_latents(jax.random.split(jax.random.key(2), 128), (2,))  # other latents
  ref = jax.jit(lambda l: sampling.sample(g.denoise, l, "heun", 128))(lat)
  for solver, nfe in (("ipndm", 6), ("dpmpp_2m", 6), ("heun", 7)):
    sig, info = timesteps.gits_sigmas(g.denoise, fit, solver, nfe, fine_steps=40)
    K = info["num_steps"]
    assert sig[0] == 80.0 and sig[-1] == 0.0 and len(sig) == K + 1
    karras = np.append(R.edm_grid(K)[:-1], 0.0)
    e_gits = timesteps.path_error(g.denoise, lat, solver, sig, ref)
    e_karras = timesteps.path_error(g.denoise, lat, solver, karras, ref)
    assert e_gits < 0.75 * e_karras, (solver, e_gits, e_karras, sig)


def test_schedule_files(tmp_path):
  sig = np.array([80.0, 3.0, 0.5, 0.0])
  p = tmp_path / "s.json"
  timesteps.save_schedule(str(p), sig, {"method": "gits", "solver": "ipndm", "nfe": 3})
  got, rec = timesteps.load_schedule(str(p), num_steps=3)
  np.testing.assert_array_equal(got, sig)
  assert rec["solver"] == "ipndm" and rec["num_steps"] == 3
  with pytest.raises(JaxdiffError, match="4 noise levels \\(3 steps\\) but 5 steps need 6"):
    timesteps.load_schedule(str(p), num_steps=5)
  bad = tmp_path / "bad.json"
  for content, match in ((json.dumps({"sigmas": [80.0, 5.0, 9.0, 0.0]}), "decreasing"),
                         (json.dumps({"sigmas": [80.0, 5.0, 1.0]}), "end at 0"),
                         (json.dumps({"grid": []}), "no 'sigmas'"),
                         (json.dumps({"sigmas": ["a", "b"]}), "numbers"),
                         ("{not json", "cannot read")):
    bad.write_text(content)
    with pytest.raises(JaxdiffError, match=match):
      timesteps.load_schedule(str(bad))
  with pytest.raises(JaxdiffError, match="cannot read"):
    timesteps.load_schedule(str(tmp_path / "missing.json"))


def test_progress_hook_sees_every_cost_row_and_changes_nothing():
  lat = jnp.asarray(LAT, jnp.float32)
  seen = []

  def progress(rows):
    for i in rows:
      seen.append(i)
      yield i
  sig, info = timesteps.gits_sigmas(GMM.denoise, lat, "ipndm", 3, fine_steps=6, progress=progress)
  assert seen == list(range(6))  # rows 0..M−1 of the [M+1, M+1] matrix, M = 6 intervals
  plain, plain_info = timesteps.gits_sigmas(GMM.denoise, lat, "ipndm", 3, fine_steps=6)
  np.testing.assert_array_equal(sig, plain)
  assert info == plain_info


def test_a_cache_gives_the_same_grids_and_skips_the_teacher():
  """With a cache the teacher trajectory and cost matrix are computed once; every grid is the
  one an uncached search gives."""
  gmm = exact.random_mixture(seed=0, dim=2, num_components=3, spread=1.0, scale=0.25)
  calls = []

  def denoise(x, sigma):
    calls.append(1)
    return gmm.denoise(x, sigma)
  latents = jax.random.normal(jax.random.key(1), (16, 2))
  cache = {}
  for solver, nfe in (("ipndm", 4), ("dpmpp_2m", 4), ("ipndm", 6)):
    plain, _ = timesteps.gits_sigmas(gmm.denoise, latents, solver, nfe, fine_steps=12)
    n_before = len(calls)
    cached, _ = timesteps.gits_sigmas(denoise, latents, solver, nfe, fine_steps=12, cache=cache)
    np.testing.assert_array_equal(cached, plain)
    if solver != "ipndm" or nfe != 4:
      assert len(calls) == n_before  # only the DP ran
