"""`jaxdiff sample --workdir DIR --num N --out FILE.npz [--seed S] [--solver NAME] [--steps K]
[--label C] [--grid FILE.png] [--schedule FILE.json | --sigmas S0,S1,...] [--guide DIR2]
[--guidance W] [--discriminator DISC [--dg-weight W]]`."""


def add_arguments(parser):
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num", type=int, required=True, help="number of images")
  parser.add_argument("--out", required=True, help="output .npz (images uint8 [N,H,W,C], labels)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--solver", default=None, help="default: the config's sampler.solver")
  parser.add_argument("--steps", type=int, default=None, help="default: sampler.num_steps")
  parser.add_argument("--label", type=int, default=None, help="fix the class of every sample")
  parser.add_argument("--grid", default=None, help="also write a PNG grid of the samples")
  parser.add_argument("--batch", type=int, default=256, help="images per compiled call")
  parser.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
  add_grid_arguments(parser)
  add_guidance_arguments(parser)
  add_discriminator_arguments(parser)


# ---------------------------------------------------------------- σ grids (few-step sampling)
def add_grid_arguments(parser):
  g = parser.add_argument_group("noise levels (default: the config's grid)")
  g.add_argument("--schedule", default=None, metavar="FILE.json",
                 help="σ grid from `jaxdiff schedule` (its solver and steps unless given; they "
                      "must match)")
  g.add_argument("--sigmas", default=None, metavar="S0,S1,...",
                 help="decreasing noise levels, one per step (a final 0 is added): e.g. the "
                      "consistency solver's 80,0.821")


def grid_options(args):
  """(solver, steps, sigmas or None) from --solver / --steps / --schedule / --sigmas, checked."""
  from jaxdiff.errors import JaxdiffError
  if args.steps is not None and args.steps < 1:
    raise JaxdiffError(f"--steps must be >= 1, got {args.steps}")
  if args.schedule and args.sigmas:
    raise JaxdiffError("give --schedule or --sigmas, not both")
  if args.schedule:
    from jaxdiff.timesteps import load_schedule
    sig, rec = load_schedule(args.schedule, args.steps)
    found = rec.get("solver")
    if args.solver and found and args.solver != found:
      raise JaxdiffError(f"--schedule {args.schedule} was searched for solver {found!r} "
                         f"(NFE {rec.get('nfe')}), not {args.solver!r}; pass --solver {found}, or "
                         f"search one with `jaxdiff schedule --solver {args.solver}`")
    return args.solver or found, len(sig) - 1, sig
  if args.sigmas:
    try:
      sig = [float(v) for v in args.sigmas.split(",") if v.strip()]
    except ValueError:
      raise JaxdiffError(f"--sigmas {args.sigmas!r} must be numbers separated by commas") from None
    return args.solver, args.steps, sig
  return args.solver, args.steps, None


# ---------------------------------------------------------------- guidance
def add_guidance_arguments(parser):
  g = parser.add_argument_group("guidance")
  g.add_argument("--guide", default=None,
                 help="autoguidance: a second workdir of the same data (a smaller and/or "
                      "shorter-trained model; an unconditional one is EDM2's classifier-free "
                      "guidance); D = D_guide + W·(D − D_guide)")
  g.add_argument("--guidance", type=float, default=None,
                 help="the weight W: of autoguidance with --guide, else classifier-free "
                      "(default: the config's sampler.guidance)")


def guided_model(args, model):
  """`model` autoguided by --guide (its EMA weights), or `model` itself without --guide."""
  if not args.guide:
    return model
  from jaxdiff.errors import JaxdiffError
  from jaxdiff.model import load
  if args.guidance is None:
    raise JaxdiffError("--guide needs --guidance W (W > 1 strengthens the guidance; W = 1 is the "
                       "model alone)")
  return model.with_guide(load(args.guide))


# ---------------------------------------------------------------- discriminator guidance
def add_discriminator_arguments(parser):
  g = parser.add_argument_group("discriminator guidance")
  g.add_argument("--discriminator", default=None, metavar="DISC",
                 help="a discriminator workdir (configs/digits_discriminator.py) trained against "
                      "this model: D' = D + W·σ²·∇ log(d / (1 − d)) (jaxdiff/dg.py)")
  g.add_argument("--dg-weight", type=float, default=None, metavar="W",
                 help="the weight W (default: the discriminator's discriminator.weight; 0 = off)")


def discriminator_model(args, model):
  """`model` with discriminator guidance by --discriminator, or `model` itself without it."""
  from jaxdiff.errors import JaxdiffError
  if not args.discriminator:
    if args.dg_weight is not None:
      raise JaxdiffError("--dg-weight needs --discriminator DISC")
    return model
  if args.guide:
    raise JaxdiffError("--discriminator does not combine with --guide; use one of them")
  from jaxdiff.dg_model import with_discriminator
  return with_discriminator(model, args.discriminator, args.dg_weight)


def run(args, extra):
  import os
  import time

  import numpy as np

  from jaxdiff.errors import JaxdiffError
  from jaxdiff.fileio import atomic_write, check_writable
  from jaxdiff.images import save_grid
  from jaxdiff.model import load
  if not args.out.endswith(".npz"):
    raise JaxdiffError(f"--out {args.out!r} must end in .npz")
  # Both outputs are checked before the (long) sampling, so a bad path costs nothing.
  check_writable(args.out, "--out")
  if args.grid:
    check_writable(args.grid, "--grid")
  solver, steps, sigmas = grid_options(args)  # a bad grid fails before loading anything
  model = guided_model(args, load(args.workdir, ema=not args.raw))
  model = discriminator_model(args, model)
  t0 = time.time()
  images, labels = model.sample_with_labels(args.num, seed=args.seed, label=args.label,
                                            solver=solver, steps=steps,
                                            batch_size=args.batch, progress=True, sigmas=sigmas,
                                            guidance=args.guidance)
  arrays = {"images": images}
  if labels is not None:
    arrays["labels"] = labels.astype(np.int32)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  # Via a temporary file beside it: never a half-written sample file under the requested name.
  atomic_write(args.out, lambda f: np.savez(f, **arrays))
  if args.grid:
    # A conditional model's labels cycle 0..C-1, so C columns put one class in each column.
    save_grid(images[:256], args.grid, cols=model.label_dim or None)
  import sys
  print(f"jaxdiff sample: {args.num} images in {time.time() - t0:.1f} s -> {args.out}",
        file=sys.stderr)
  return 0
