"""Samplers vs independent NumPy float64 implementations driven by an exact mixture denoiser."""

import pathlib
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmm_reference as R
from jaxdiff import exact, sampling
from jaxdiff.errors import JaxdiffError
from jaxdiff.precond import IDDPMPrecond

W = np.array([0.3, 0.5, 0.2])
MU = np.array([[-1.0, 0.5], [1.0, 1.0], [0.0, -1.2]])
_A = np.random.default_rng(0).normal(size=(3, 2, 2)) * 0.3
COVS = _A @ _A.transpose(0, 2, 1) + 0.01 * np.eye(2)
GMM = exact.GaussianMixture.create(W, MU, COVS)
LAT = np.random.default_rng(1).normal(size=(8, 2))


def D_np(x, sigma):
  return R.gmm_denoise(W, MU, COVS, x, sigma)


def run(denoise, lat, *args, key=None, **kw):
  """sample() under one jit (eager calls compile every small op separately: slow on CPU)."""
  return jax.jit(lambda l, k: sampling.sample(denoise, l, *args, key=k, **kw))(lat, key)


def step_noise(keys, N, shape):
  """The documented noise convention: step i of sample b uses normal(fold_in(keys[b], i))."""
  f = jax.jit(jax.vmap(jax.vmap(lambda k, i: jax.random.normal(jax.random.fold_in(k, i), shape),
                                (0, None)), (None, 0)))
  return np.asarray(f(keys, jnp.arange(N)), np.float64)


def rel(a, b):
  return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


# ---------------------------------------------------------------- grid
def test_karras_sigmas_formula():
  s = sampling.karras_sigmas(18, 0.002, 80.0, 7.0)
  chex.assert_shape(s, (19,))
  chex.assert_type(s, jnp.float32)
  i = np.arange(18)
  want = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
  np.testing.assert_allclose(np.asarray(s[:-1]), want, rtol=1e-6)
  assert float(s[-1]) == 0.0 and float(s[0]) == pytest.approx(80.0) and float(s[17]) == pytest.approx(0.002)
  assert np.all(np.diff(np.asarray(s)) < 0)
  np.testing.assert_array_equal(np.asarray(sampling.karras_sigmas(1)), np.float32([80.0, 0.0]))


# ---------------------------------------------------------------- Algorithm 2 vs NumPy float64
@pytest.mark.parametrize("solver", ["heun", "euler"])
@pytest.mark.parametrize("N", [18, 5])
def test_edm_deterministic_matches_numpy(solver, N):
  x = jax.jit(lambda l: sampling.sample(GMM.denoise, l, solver=solver, num_steps=N))(
      jnp.asarray(LAT, jnp.float32))
  chex.assert_shape(x, LAT.shape)
  chex.assert_type(x, jnp.float32)
  want = R.algorithm2(D_np, LAT, N, heun=solver == "heun")
  assert rel(x, want) < 1e-5
  np.testing.assert_allclose(np.asarray(x), want, rtol=1e-5, atol=1e-5)


def test_edm_stochastic_matches_numpy_with_the_same_noise():
  N, churn, smin, smax, snoise = 10, 30.0, 0.05, 20.0, 1.007
  keys = jax.random.split(jax.random.key(3), LAT.shape[0])
  x = run(GMM.denoise, jnp.asarray(LAT, jnp.float32), "heun", N, s_churn=churn,
          s_min=smin, s_max=smax, s_noise=snoise, key=keys)
  noise = step_noise(keys, N, (2,))
  want = R.algorithm2(D_np, LAT, N, S_churn=churn, S_min=smin, S_max=smax, S_noise=snoise,
                      noise=noise)
  assert rel(x, want) < 1e-5
  deterministic = R.algorithm2(D_np, LAT, N)
  assert rel(deterministic, want) > 1e-3  # the churn really changed the result


def test_heun_float64_agreement_in_x64_mode():
  """With jax_enable_x64 the same code agrees with NumPy float64 to ~1e-12 (own process)."""
  code = textwrap.dedent("""
    import jax; jax.config.update("jax_enable_x64", True)
    import sys; sys.path.insert(0, "tests")
    import numpy as np, jax.numpy as jnp
    import gmm_reference as R
    from jaxdiff import exact, sampling
    from test_sampling import W, MU, COVS, LAT, D_np
    g = exact.GaussianMixture.create(W, MU, COVS, dtype=jnp.float64)
    x = sampling.sample(g.denoise, jnp.asarray(LAT, jnp.float64), "heun", 18)
    assert x.dtype == jnp.float64, x.dtype
    want = R.algorithm2(D_np, LAT, 18)
    print(np.linalg.norm(np.asarray(x) - want) / np.linalg.norm(want))
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=str(pathlib.Path(__file__).parent.parent))
  assert out.returncode == 0, out.stderr[-2000:]
  assert float(out.stdout.strip().splitlines()[-1]) < 1e-11


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,match", [
    (dict(solver="rk4"), "unknown solver"),
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=2.5), "num_steps"),
    (dict(sigma_min=80.0, sigma_max=80.0), "sigma_min < sigma_max"),
    (dict(sigma_min=1.0, sigma_max=0.5), "sigma_min < sigma_max"),
    (dict(discretization="cosine"), "discretization"),
    (dict(solver="dpmpp_2m", s_churn=10.0), "S_churn"),
    (dict(solver="heun", s_churn=10.0), "needs key"),
])
def test_bad_input_raises_before_compiling(kw, match):
  calls = []

  def den(x, s):
    calls.append(1)
    return x

  with pytest.raises(JaxdiffError, match=match):
    sampling.sample(den, jnp.zeros((2, 2)), **kw)
  assert not calls  # nothing was traced


def test_nfe():
  assert sampling.nfe("heun", 18) == 35
  assert sampling.nfe("euler", 18) == 18
  assert sampling.nfe("dpmpp_2m", 10) == 10
  with pytest.raises(JaxdiffError):
    sampling.nfe("nope", 3)


@pytest.mark.parametrize("solver", sampling.SOLVERS)
def test_nfe_counts_denoiser_calls(solver):
  count = []

  def den(x, s):
    jax.debug.callback(lambda: count.append(1))
    return GMM.denoise(x, s)

  key = jax.random.key(0)  # the deterministic solvers ignore it
  jax.block_until_ready(run(den, jnp.asarray(LAT[:2], jnp.float32), solver, 7, key=key))
  assert len(count) == sampling.nfe(solver, 7)


# ---------------------------------------------------------------- ablation sampler (EDM Table 2 rows)
@pytest.mark.parametrize("solver,disc,sched,scal", [
    ("euler", "vp", "vp", "vp"),       # VP original sampler
    ("heun", "edm", "vp", "vp"),       # VP + Heun & EDM t_i
    ("euler", "ve", "ve", "none"),     # VE original sampler
    ("heun", "edm", "ve", "none"),     # VE + Heun & EDM t_i
    ("heun", "vp", "linear", "none"),  # σ(t) = t, s = 1 on the VP grid
])
def test_ablation_sampler_matches_numpy(solver, disc, sched, scal):
  smin, smax = {"vp": (0.0064, 152.0), "ve": (0.02, 100.0), "edm": (0.002, 80.0)}[disc]
  N = 12
  x = run(GMM.denoise, jnp.asarray(LAT, jnp.float32), solver, N, smin, smax,
                      discretization=disc, schedule=sched, scaling=scal)
  want = R.ablation(D_np, LAT, N, solver, disc, sched, scal, smin, smax)
  assert rel(x, want) < 1e-5


def test_ablation_alpha():
  x = run(GMM.denoise, jnp.asarray(LAT, jnp.float32), "heun", 8, alpha=0.5)
  want = R.ablation(D_np, LAT, 8, "heun", "edm", "linear", "none", 0.002, 80.0, alpha=0.5)
  assert rel(x, want) < 1e-5
  assert rel(R.algorithm2(D_np, LAT, 8), want) > 1e-4  # alpha matters


def test_iddpm_discretization_rounds_to_the_table():
  seen = []
  pc = IDDPMPrecond()

  def den(x, s):
    jax.debug.callback(lambda s: seen.append(float(np.asarray(s)[0])), s)
    return GMM.denoise(x, s)

  jax.block_until_ready(sampling.sample(den, jnp.asarray(LAT, jnp.float32), "euler", 6,
                                        discretization="iddpm", round_sigma=pc.round_sigma))
  assert len(seen) == 6
  u = pc.u.astype(np.float32)
  for s in seen:
    assert np.min(np.abs(u - s)) <= 1e-6 * s  # every σ the net sees is a table entry
  assert seen[0] == pytest.approx(float(u[np.argmin(np.abs(pc.u - 81.0))]), rel=1e-6)


# ---------------------------------------------------------------- fast solvers vs NumPy
@pytest.mark.parametrize("solver", ["dpmpp_2m", "ipndm", "unipc"])
@pytest.mark.parametrize("N", [1, 2, 3, 10])
def test_fast_solvers_match_numpy(solver, N):
  x = run(GMM.denoise, jnp.asarray(LAT, jnp.float32), solver, N)
  want = {"dpmpp_2m": R.dpmpp_2m, "ipndm": R.ipndm, "unipc": R.unipc}[solver](D_np, LAT, R.edm_grid(N))
  assert rel(x, want) < 1e-5


def test_euler_ancestral_matches_numpy():
  N = 8
  keys = jax.random.split(jax.random.key(5), LAT.shape[0])
  x = run(GMM.denoise, jnp.asarray(LAT, jnp.float32), "euler_ancestral", N, key=keys)
  noise = step_noise(keys, N, (2,))
  want = R.euler_ancestral(D_np, LAT, R.edm_grid(N), noise)
  assert rel(x, want) < 1e-5


def test_high_order_solvers_converge_at_second_order():
  """On a smooth mixture, halving the step size cuts the error ~4x for heun / dpmpp_2m / ipndm."""
  g = exact.GaussianMixture.create(W, MU, np.stack([np.eye(2) * 0.09, [[0.1, 0.05], [0.05, 0.06]],
                                                    np.eye(2) * 0.04]))
  lat = jnp.asarray(np.random.default_rng(5).normal(size=(16, 2)), jnp.float32)
  ref = np.asarray(run(g.denoise, lat, "heun", 800), np.float64)  # converged
  err = {s: [rel(run(g.denoise, lat, s, N), ref) for N in (20, 40)]
         for s in ("euler", "heun", "dpmpp_2m", "ipndm", "unipc")}
  for s in ("heun", "dpmpp_2m", "ipndm", "unipc"):
    assert np.log2(err[s][0] / err[s][1]) > 1.8, err
    assert err[s][1] < err["euler"][1] / 5, err
  # UniC's corrector buys accuracy over the same predictor (DPM-Solver++(2M)) at equal NFE.
  assert err["unipc"][1] < err["dpmpp_2m"][1] / 1.5, err


# ---------------------------------------------------------------- per-sample keys, compile once
@pytest.mark.parametrize("solver", ["heun", "euler_ancestral"])
def test_sample_does_not_depend_on_its_batch(solver):
  keys = jax.random.split(jax.random.key(11), 6)
  lat = sampling.sample_latents(keys, (2,))
  kw = dict(s_churn=40.0) if solver == "heun" else {}
  full = run(GMM.denoise, lat, solver, 6, key=keys, **kw)
  part = run(GMM.denoise, lat[2:5], solver, 6, key=keys[2:5], **kw)
  np.testing.assert_allclose(np.asarray(part), np.asarray(full[2:5]), rtol=1e-6, atol=1e-6)
  # ... and different keys do give different samples.
  other = run(GMM.denoise, lat, solver, 6, key=jax.random.split(jax.random.key(12), 6), **kw)
  assert np.abs(np.asarray(other) - np.asarray(full)).max() > 1e-2
  # Raw uint32 keys work the same way.
  raw = run(GMM.denoise, lat, solver, 6, key=jax.random.key_data(keys), **kw)
  np.testing.assert_allclose(np.asarray(raw), np.asarray(full), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m", "euler_ancestral"])
def test_sampling_compiles_once_per_solver_steps_shape(solver):
  traces = []

  @jax.jit
  def run(means, key, labels):
    traces.append(1)
    g = exact.GaussianMixture(GMM.log_weights, means + labels[:, None], GMM.eigvecs, GMM.eigvals)
    lat = sampling.sample_latents(jax.random.split(key, 4), (2,))
    return sampling.sample(g.denoise, lat, solver, 5, key=key, s_churn=5.0 if solver == "heun" else 0.0)

  outs = [run(GMM.means, jax.random.key(s), jnp.full((3,), float(s))) for s in range(3)]
  assert len(traces) == 1 and run._cache_size() == 1
  assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[1]))


def test_traced_options_are_refused_with_a_clear_message():
  with pytest.raises(JaxdiffError, match="static"):
    jax.jit(lambda smax: sampling.sample(GMM.denoise, jnp.zeros((2, 2)), sigma_max=smax))(80.0)
  # Concrete NumPy / JAX scalars are fine.
  x = run(GMM.denoise, jnp.asarray(LAT, jnp.float32), "euler", 4, np.float32(0.002), jnp.array(80.0))
  want = R.algorithm2(D_np, LAT, 4, heun=False, sigma_min=float(np.float32(0.002)))
  assert rel(x, want) < 1e-5
