"""Sampler accuracy against an exact Gaussian-mixture denoiser (no network, no training noise).

  python bench/sampler_accuracy.py [--json] [--num 20000] [--nfe 5,6,8,10,15,20,35,50]
      [--optimized ipndm,dpmpp_2m --optimized-nfe 5,6,8,10]

For a 2-D and a 16-D mixture (full covariances) and each solver and NFE budget, draws `--num` ODE
(or SDE) samples with the exact denoiser and measures their sliced Wasserstein-2 distance to
`--num` true mixture samples. The noise floor is the same distance between two independent true
sample sets of the same size (mean ± std over `--floor-reps` pairs): a solver "at the floor" is
indistinguishable from exact sampling at this sample size.

Also reported: `path_rms`, the RMS distance of each ODE endpoint from a converged solution of the
same ODE from the same latents (Heun, 256 steps): pure discretization error, free of sampling noise.

Why sliced Wasserstein-2: with a fixed set of random directions it costs O(n log n) per direction
(sorting), so 20k+ samples per set are cheap and the floor is low; it sees both mode weights and
mode shapes; and its units are those of the data. Energy distance needs O(n²) pairs.
`--optimized SOLVERS` adds rows "SOLVER+gits": the same solver on GITS time steps
(`jaxdiff.timesteps.gits_sigmas`, fine Karras grid of `--gits-fine` points, teacher Heun with 4
substeps per interval) searched on `--gits-latents` latents drawn from another key than the
evaluation latents, so the grid is not fitted to the samples it is scored on.
Logs go to stderr; `--json` prints one JSON object on stdout.
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from jaxdiff import exact, sampling, timesteps  # noqa: E402

SOLVERS = ("euler", "heun", "dpmpp_2m", "unipc", "ipndm", "euler_ancestral")


def log(*a):
  print(*a, file=sys.stderr, flush=True)


def steps_for(solver, nfe_budget):
  """The most steps whose NFE fits the budget (Heun: 2N − 1 ≤ budget)."""
  return max(1, (nfe_budget + 1) // 2) if solver == "heun" else nfe_budget


def sliced_w2(a, b, directions):
  pa = jnp.sort(a @ directions, axis=0)
  pb = jnp.sort(b @ directions, axis=0)
  return jnp.sqrt(jnp.mean((pa - pb) ** 2))


def mixtures():
  # 2-D: 8 anisotropic components with random full covariances in about [-1, 1]².
  m2 = exact.random_mixture(seed=0, dim=2, num_components=8, spread=1.0, scale=0.25)
  # 16-D: 10 components, correlated full covariances.
  m16 = exact.random_mixture(seed=1, dim=16, num_components=10, spread=1.0, scale=0.5)
  return {"gmm2d": m2, "gmm16d": m16}


def run(args):
  nfes = [int(v) for v in args.nfe.split(",")]
  n = args.num
  sw_fn = jax.jit(sliced_w2)
  out = {"num_samples": n, "nfe_budgets": nfes, "distance": "sliced_w2", "projections": args.projections,
         "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0, "mixtures": {}}
  for name, g in mixtures().items():
    d = g.dim
    dirs = jax.random.normal(jax.random.key(100), (d, args.projections))
    dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
    true = g.sample(jax.random.key(1), n)
    floors = [float(sw_fn(g.sample(jax.random.key(10 + 2 * r), n),
                          g.sample(jax.random.key(11 + 2 * r), n), dirs))
              for r in range(args.floor_reps)]
    floor_vs_true = [float(sw_fn(g.sample(jax.random.key(50 + r), n), true, dirs))
                     for r in range(args.floor_reps)]
    keys = jax.random.split(jax.random.key(2), n)
    lat = sampling.sample_latents(keys, (d,))
    ref = jax.jit(lambda l: sampling.sample(g.denoise, l, "heun", 256))(lat)
    entry = {"dim": d, "components": int(g.means.shape[0]),
             "noise_floor": float(np.mean(floors)), "noise_floor_std": float(np.std(floors)),
             "noise_floor_vs_same_true_set": float(np.mean(floor_vs_true)),
             "converged_heun256": float(sw_fn(ref, true, dirs)), "results": []}
    log(f"{name}: floor {entry['noise_floor']:.5f} ± {entry['noise_floor_std']:.5f}, "
        f"heun-256 {entry['converged_heun256']:.5f}")
    for solver in args.solvers.split(","):
      seen = set()
      for budget in nfes:
        N = steps_for(solver, budget)
        if N in seen:
          continue
        seen.add(N)
        t0 = time.perf_counter()
        x = jax.jit(lambda l, k: sampling.sample(g.denoise, l, solver, N, key=k))(lat, keys)
        x = jax.block_until_ready(x)
        sw = float(sw_fn(x, true, dirs))
        row = {"solver": solver, "steps": N, "nfe": sampling.nfe(solver, N), "sliced_w2": sw,
               "path_rms": float(jnp.sqrt(jnp.mean(jnp.sum((x - ref) ** 2, -1)))),
               "seconds": round(time.perf_counter() - t0, 2)}
        entry["results"].append(row)
        log(f"  {solver:16s} N={N:3d} NFE={row['nfe']:3d}  SW2={sw:.5f}  path_rms={row['path_rms']:.5f}")
    for solver in (args.optimized.split(",") if args.optimized else []):
      fit = sampling.sample_latents(jax.random.split(jax.random.key(77), args.gits_latents), (d,))
      for budget in [int(v) for v in args.optimized_nfe.split(",")]:
        t0 = time.perf_counter()
        sig, info = timesteps.gits_sigmas(g.denoise, fit, solver, budget, fine_steps=args.gits_fine)
        N = info["num_steps"]
        x = jax.jit(lambda l, k: sampling.sample(g.denoise, l, solver, N, key=k, sigmas=sig))(lat, keys)
        x = jax.block_until_ready(x)
        sw = float(sw_fn(x, true, dirs))
        row = {"solver": solver + "+gits", "steps": N, "nfe": sampling.nfe(solver, N), "sliced_w2": sw,
               "path_rms": float(jnp.sqrt(jnp.mean(jnp.sum((x - ref) ** 2, -1)))),
               "sigmas": [round(float(v), 5) for v in sig],
               "seconds": round(time.perf_counter() - t0, 2)}
        entry["results"].append(row)
        log(f"  {row['solver']:16s} N={N:3d} NFE={row['nfe']:3d}  SW2={sw:.5f}  "
            f"path_rms={row['path_rms']:.5f}  sigmas={row['sigmas']}")
    out["mixtures"][name] = entry
  if args.optimized:
    out["gits"] = {"fine_steps": args.gits_fine, "fit_latents": args.gits_latents, "teacher": "heun x4"}
  return out


def table(out, path=False):
  """Markdown tables: one row per NFE budget, one column per solver (Heun: its 2N − 1 ≤ budget)."""
  budgets = out.get("nfe_budgets", [5, 6, 8, 10, 15, 20, 35, 50])
  lines = []
  for name, e in out["mixtures"].items():
    present = {r["solver"] for r in e["results"]}
    cols = [s for s in SOLVERS if s in present] + sorted(present - set(SOLVERS))
    budgets = sorted(set(budgets) | {r["nfe"] for r in e["results"] if r["solver"].endswith("+gits")})
    lines.append(f"\n{name} (d={e['dim']}, {e['components']} components), n={out['num_samples']}: "
                 f"noise floor {e['noise_floor']:.4f} ± {e['noise_floor_std']:.4f}, "
                 f"Heun-256 (same latents) {e['converged_heun256']:.4f}\n")
    lines.append("| NFE budget | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for b in budgets:
      cells = []
      for solver in cols:
        N = steps_for(solver.split("+")[0], b)
        r = next((r for r in e["results"] if r["solver"] == solver and r["steps"] == N), None)
        if r is None:
          cells.append("")
        else:
          extra = f" ({r['nfe']})" if r["nfe"] != b else ""
          cells.append(f"{r['sliced_w2']:.4f}{extra}" + (f" / {r['path_rms']:.3f}" if path else ""))
      lines.append(f"| {b} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", action="store_true")
  p.add_argument("--num", type=int, default=20000, help="samples per set")
  p.add_argument("--nfe", default="5,6,8,10,15,20,35,50")
  p.add_argument("--solvers", default=",".join(SOLVERS))
  p.add_argument("--projections", type=int, default=256)
  p.add_argument("--floor-reps", type=int, default=5)
  p.add_argument("--optimized", default="", help="solvers to add on GITS time steps, e.g. ipndm,dpmpp_2m")
  p.add_argument("--optimized-nfe", default="5,6,8,10")
  p.add_argument("--gits-fine", type=int, default=100, help="points of the fine Karras grid")
  p.add_argument("--gits-latents", type=int, default=512, help="latents the search uses")
  p.add_argument("--path", action="store_true", help="tables also show path_rms (SW2 / path_rms)")
  p.add_argument("--table-from", metavar="FILE.json", help="only print the tables of saved --json runs (comma-separated, merged)")
  args = p.parse_args()
  if args.table_from:
    runs = []
    for path in args.table_from.split(","):
      with open(path) as f:
        runs.append(json.load(f))
    for extra in runs[1:]:  # merge rows of runs with other solvers on the same mixtures
      for name, e in extra["mixtures"].items():
        runs[0]["mixtures"][name]["results"] += e["results"]
    print(table(runs[0], args.path))
    return
  out = run(args)
  if args.json:
    print(json.dumps(out))
  else:
    print(table(out, args.path))


if __name__ == "__main__":
  main()
