"""`jaxdiff schedule --workdir DIR --solver NAME --nfe N [--out FILE.json] [--num B] [--seed S]
[--fine-steps M]`: GITS time steps (jaxdiff.timesteps) for one ODE solver and NFE budget, searched
on the workdir's model (EMA weights) from fixed latents. The grid is recorded in
DIR/schedules/gits_<solver>_nfe<N>.json (and --out); `jaxdiff sample --schedule FILE.json` uses it."""


def add_arguments(parser):
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--solver", required=True, help="the ODE solver the grid is for (ipndm, "
                      "heun, dpmpp_2m, unipc, dpmpp_3m, euler, ...)")
  parser.add_argument("--nfe", type=int, required=True, help="network evaluations per sample")
  parser.add_argument("--out", default=None, help="also write the schedule here (.json)")
  parser.add_argument("--num", type=int, default=256, help="latents the search runs on")
  parser.add_argument("--seed", type=int, default=0, help="seed of the latents (and labels)")
  parser.add_argument("--fine-steps", type=int, default=100, help="points of the fine grid")
  parser.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")


def schedule_path(workdir: str, solver: str, nfe: int) -> str:
  """Where `jaxdiff schedule` records a workdir's grid."""
  import os
  return os.path.join(workdir, "schedules", f"gits_{solver}_nfe{int(nfe)}.json")


def search(model, solver: str, nfe: int, num: int = 256, seed: int = 0, fine_steps: int = 100,
           progress: bool = False, cache: dict | None = None):
  """(sigmas, info) of GITS on `model` (a jaxdiff.model.Model) from `num` fixed latents; labels
  cycle over the classes of a conditional model. Pure apart from the bar."""
  import jax
  import jax.numpy as jnp

  from jaxdiff import timesteps
  from jaxdiff.denoiser import make_denoiser
  from jaxdiff.errors import JaxdiffError
  from jaxdiff.model import sample_keys
  if num < 1:
    raise JaxdiffError(f"--num must be at least 1 (got {num})")
  if model.exp.family == "consistency":
    raise JaxdiffError("time-step search is for diffusion models and ODE solvers; a consistency "
                       "model samples with --solver consistency")
  timesteps.steps_for_nfe(solver, nfe)  # the one-line errors before any work
  keys = sample_keys(seed, 0, num)
  latents = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), model.shape))(keys)
  labels = model.labels_for(num)
  class_labels = None if labels is None else jax.nn.one_hot(jnp.asarray(labels), model.label_dim)
  den = make_denoiser(model.graphdef, model.params, model.precond)
  denoise = lambda x, sigma: den(x, sigma, class_labels=class_labels)  # noqa: E731
  s = model.exp.sampling
  bar = None
  if progress:
    from jaxdiff.progress import bar as make_bar
    bar = lambda rows: make_bar(rows, desc="schedule: cost rows", unit="row")  # noqa: E731
  sigmas, info = timesteps.gits_sigmas(denoise, latents, solver, nfe, fine_steps=fine_steps,
                                       sigma_min=s.sigma_min, sigma_max=s.sigma_max, rho=s.rho,
                                       progress=bar, cache=cache)
  info.update(num_latents=int(num), seed=int(seed), sigma_min=s.sigma_min, sigma_max=s.sigma_max)
  return sigmas, info


def write(path: str, sigmas, info: dict) -> None:
  """The schedule file (timesteps.save_schedule writes it atomically: never half a schedule)."""
  from jaxdiff import timesteps
  timesteps.save_schedule(path, sigmas, info)


def run(args, extra):
  import sys
  import time

  from jaxdiff.errors import JaxdiffError
  from jaxdiff.fileio import check_writable
  from jaxdiff.model import load
  if args.out is not None:
    if not args.out.endswith(".json"):
      raise JaxdiffError(f"--out {args.out!r} must end in .json")
    check_writable(args.out, "--out")
  recorded = schedule_path(args.workdir, args.solver, args.nfe)
  check_writable(recorded, "the workdir's schedule file")  # before the search, not after
  t0 = time.time()
  model = load(args.workdir, ema=not args.raw)
  sigmas, info = search(model, args.solver, args.nfe, args.num, args.seed, args.fine_steps,
                        progress=True)
  info["workdir"] = args.workdir
  write(recorded, sigmas, info)
  if args.out:
    write(args.out, sigmas, info)
  grid = ", ".join(f"{v:.4g}" for v in sigmas)
  print(f"jaxdiff schedule: {args.solver} at {args.nfe} NFE ({info['num_steps']} steps): "
        f"[{grid}] in {time.time() - t0:.1f} s -> {args.out or recorded}", file=sys.stderr)
  return 0
