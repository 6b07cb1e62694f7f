"""DPM-Solver++(3M), the k-diffusion SDE solvers, explicit grids and consistency sampling, each
against an independent NumPy float64 loop (tests/gmm_reference.py) driven by the exact mixture."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmm_reference as R
from jaxdiff import sampling, schedules
from jaxdiff.errors import JaxdiffError
from test_sampling import GMM, LAT, D_np, rel, run, step_noise

LAT32 = jnp.asarray(LAT, jnp.float32)


@pytest.mark.parametrize("N", [1, 2, 3, 4, 10])
def test_dpmpp_3m_matches_numpy(N):
  x = run(GMM.denoise, LAT32, "dpmpp_3m", N)
  chex.assert_shape(x, LAT.shape)
  chex.assert_type(x, jnp.float32)
  want = R.dpmpp_3m_sde(D_np, LAT, R.edm_grid(N), eta=0.0)
  assert rel(x, want) < 1e-5


@pytest.mark.parametrize("solver,ref", [("dpmpp_2m_sde", R.dpmpp_2m_sde),
                                        ("dpmpp_3m_sde", R.dpmpp_3m_sde)])
@pytest.mark.parametrize("eta,s_noise", [(1.0, 1.0), (0.5, 1.003)])
def test_sde_solvers_match_numpy_with_the_same_noise(solver, ref, eta, s_noise):
  N = 8
  keys = jax.random.split(jax.random.key(7), LAT.shape[0])
  x = run(GMM.denoise, LAT32, solver, N, key=keys, eta=eta, s_noise=s_noise)
  chex.assert_type(x, jnp.float32)
  noise = step_noise(keys, N, (2,))
  want = ref(D_np, LAT, R.edm_grid(N), eta=eta, s_noise=s_noise, noise=noise)
  assert rel(x, want) < 1e-5
  # The noise is really used: the ODE (eta = 0) from the same latents lands elsewhere.
  assert rel(ref(D_np, LAT, R.edm_grid(N), eta=0.0), want) > 1e-2


def test_sde_solvers_with_eta_zero_are_the_ode_solvers():
  for sde, ode in (("dpmpp_2m_sde", "dpmpp_2m"), ("dpmpp_3m_sde", "dpmpp_3m")):
    a = run(GMM.denoise, LAT32, sde, 9, eta=0.0)
    b = run(GMM.denoise, LAT32, ode, 9)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # k-diffusion's 2M SDE at eta = 0 is DPM-Solver++(2M): the NumPy references agree in float64.
  np.testing.assert_allclose(R.dpmpp_2m_sde(D_np, LAT, R.edm_grid(9), eta=0.0),
                             R.dpmpp_2m(D_np, LAT, R.edm_grid(9)), rtol=1e-10, atol=1e-12)


def test_sde_solvers_need_a_key():
  with pytest.raises(JaxdiffError, match="needs key"):
    sampling.sample(GMM.denoise, LAT32, "dpmpp_3m_sde", 4)


def test_dpmpp_3m_converges_faster_than_2m():
  from jaxdiff import exact
  g = exact.GaussianMixture.create([0.5, 0.5], [[-0.5, 0.0], [0.6, 0.3]],
                                   [np.eye(2) * 0.09, [[0.1, 0.05], [0.05, 0.06]]])
  lat = jnp.asarray(np.random.default_rng(5).normal(size=(16, 2)), jnp.float32)
  ref = np.asarray(run(g.denoise, lat, "dpmpp_3m", 400), np.float64)
  e3 = [rel(run(g.denoise, lat, "dpmpp_3m", N), ref) for N in (16, 32)]
  e2 = [rel(run(g.denoise, lat, "dpmpp_2m", N), ref) for N in (16, 32)]
  assert np.log2(e3[0] / e3[1]) > 2.0, (e3, e2)
  assert e3[1] < e2[1], (e3, e2)


# ---------------------------------------------------------------- explicit grids
def test_explicit_karras_grid_is_bitwise_the_default():
  grid = np.append(schedules.sigma_steps("edm", 7, 0.002, 80.0, 7.0), 0.0)  # float64
  for solver in ("heun", "ipndm", "dpmpp_3m"):
    a = run(GMM.denoise, LAT32, solver, 7)
    b = run(GMM.denoise, LAT32, solver, 7, sigmas=grid)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_explicit_grid_matches_numpy_for_each_solver():
  sig = np.array([60.0, 9.0, 2.5, 0.7, 0.2, 0.03, 0.0])
  N = len(sig) - 1
  for solver, want in (("dpmpp_2m", R.dpmpp_2m(D_np, LAT, sig)), ("ipndm", R.ipndm(D_np, LAT, sig)),
                       ("unipc", R.unipc(D_np, LAT, sig)),
                       ("dpmpp_3m", R.dpmpp_3m_sde(D_np, LAT, sig, eta=0.0))):
    assert rel(run(GMM.denoise, LAT32, solver, N, sigmas=sig), want) < 1e-5, solver
  # Heun on the same grid, written out here: Euler then the trapezoidal correction (none to σ = 0).
  x = LAT * sig[0]
  for i in range(N):
    d = (x - D_np(x, sig[i])) / sig[i]
    xn = x + (sig[i + 1] - sig[i]) * d
    if sig[i + 1] > 0:
      xn = x + (sig[i + 1] - sig[i]) * 0.5 * (d + (xn - D_np(xn, sig[i + 1])) / sig[i + 1])
    x = xn
  assert rel(run(GMM.denoise, LAT32, "heun", N, sigmas=sig), x) < 1e-5
  assert rel(run(GMM.denoise, LAT32, "heun", N), x) > 1e-3  # the grid was really used


@pytest.mark.parametrize("sigmas,num_steps,match", [
    (np.array([80.0, 1.0, 0.0]), 3, "num_steps \\+ 1 = 4"),
    (np.array([[80.0, 0.0]]), 1, "num_steps \\+ 1"),
    (np.array([80.0, 1.0, 2.0, 0.0]), 3, "strictly decreasing"),
    (np.array([80.0, 1.0, 0.5, 0.1]), 3, "end at 0"),
    (np.array([np.inf, 1.0, 0.5, 0.0]), 3, "finite"),
])
def test_bad_sigmas_raise_before_tracing(sigmas, num_steps, match):
  calls = []

  def den(x, s):
    calls.append(1)
    return x

  for solver in ("heun", "ipndm", "consistency"):
    with pytest.raises(JaxdiffError, match=match):
      sampling.sample(den, jnp.zeros((2, 2)), solver, num_steps, sigmas=sigmas,
                      key=jax.random.key(0))
  assert not calls


def test_traced_sigmas_are_refused():
  with pytest.raises(JaxdiffError, match="concrete"):
    jax.jit(lambda s: sampling.sample(GMM.denoise, LAT32, "euler", 2, sigmas=s))(
        jnp.array([80.0, 1.0, 0.0]))


# ---------------------------------------------------------------- consistency sampling
def f_np(x, sigma):
  """A toy 'consistency function': any f works for checking Algorithm 1's arithmetic."""
  return D_np(x, sigma) + 0.1 * np.tanh(x) * sigma


def f_jax(x, sigma):
  return GMM.denoise(x, sigma) + 0.1 * jnp.tanh(x) * sigma[:, None]


def test_consistency_one_step_is_one_evaluation():
  calls = []

  def f(x, s):
    jax.debug.callback(lambda: calls.append(1))
    return f_jax(x, s)

  x = jax.block_until_ready(run(f, LAT32, "consistency", 1))
  assert len(calls) == 1 == sampling.nfe("consistency", 1)
  assert rel(x, f_np(LAT * 80.0, 80.0)) < 1e-5  # no key needed, f(σ_max·z, σ_max)


def test_multistep_consistency_matches_algorithm_1():
  taus = np.array([80.0, 0.8, 0.1, 0.0])
  keys = jax.random.split(jax.random.key(9), LAT.shape[0])
  x = run(f_jax, LAT32, "consistency", 3, key=keys, sigmas=taus)
  noise = step_noise(keys, 3, (2,))
  want = R.consistency_sample(f_np, LAT, taus[:-1], 0.002, noise)
  assert rel(x, want) < 1e-5
  # sigma_min is the ε of the added noise √(τ² − ε²).
  x5 = run(f_jax, LAT32, "consistency", 3, key=keys, sigmas=taus, sigma_min=0.05)
  assert rel(x5, R.consistency_sample(f_np, LAT, taus[:-1], 0.05, noise)) < 1e-5


def test_consistency_default_grid_drops_sigma_min():
  seen = []

  def f(x, s):
    jax.debug.callback(lambda s: seen.append(float(np.asarray(s)[0])), s)
    return f_jax(x, s)

  jax.block_until_ready(run(f, LAT32, "consistency", 3, key=jax.random.key(0)))
  np.testing.assert_allclose(seen, R.edm_grid(4)[:3], rtol=1e-6)


def test_consistency_bad_input():
  with pytest.raises(JaxdiffError, match="needs key"):
    sampling.sample(f_jax, LAT32, "consistency", 2)
  with pytest.raises(JaxdiffError, match="> sigma_min"):
    sampling.sample(f_jax, LAT32, "consistency", 2, sigmas=np.array([80.0, 0.001, 0.0]),
                    key=jax.random.key(0))
  with pytest.raises(JaxdiffError, match="num_steps"):
    sampling.sample(f_jax, LAT32, "consistency", 0)
