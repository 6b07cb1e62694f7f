"""`jaxdiff phema --workdir DIR --std S --out DIR2 [--images N] [--max-error E] [--json]`.

Post-hoc EMA (EDM2, Algorithm 3): the power-function EMA of relative width S at N images seen
(default: the latest snapshot) reconstructed from the snapshots an EDM2 run keeps in DIR/phema/,
written as a new workdir DIR2 (DIR's config, one checkpoint whose weights and EMAs all hold the
reconstruction) that `jaxdiff sample`, `jaxdiff eval` and `jaxdiff.load` use like any other.
"""


def add_arguments(parser):
  parser.add_argument("--workdir", required=True, help="an EDM2 run with snapshots in phema/")
  parser.add_argument("--std", type=float, required=True, help="σ_rel of the EMA, in (0, 0.289)")
  parser.add_argument("--out", required=True, help="new workdir (absent or empty)")
  parser.add_argument("--images", type=int, default=None,
                      help="reconstruct at this many images seen (a snapshot time; default the "
                           "latest)")
  parser.add_argument("--max-error", type=float, default=0.1,
                      help="refuse a width whose profile the snapshots reproduce worse than this "
                           "(relative L2; default 0.1)")
  parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def check_out(out: str, workdir: str) -> None:
  """--out must be a new (absent or empty) folder, not the source run."""
  import os

  from jaxdiff.errors import JaxdiffError
  if os.path.abspath(out) == os.path.abspath(workdir):
    raise JaxdiffError(f"--out {out!r} is the --workdir itself; write to a new folder")
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise JaxdiffError(f"--out {out!r} exists and is not empty; give a new folder")


def reconstruct_run(workdir: str, std: float, images: int | None = None,
                    max_error: float | None = 0.1, progress: bool = False):
  """(Experiment, graphdef, weights, summary dict) of the EMA of width `std` at `images` seen,
  from `workdir`'s snapshots. Raises JaxdiffError when there are none or the width is not
  representable (profile error above `max_error`)."""
  import numpy as np

  from jaxdiff import build, families, phema
  from jaxdiff.train import phema_snapshots
  exp = build.workdir_experiment(workdir)
  snaps = phema_snapshots.list_snapshots(workdir)
  use, out_images = phema.select_snapshots([(i, s) for i, s, _ in snaps], images)
  paths = {(i, s): p for i, s, p in snaps}
  in_ofs = np.array([i for i, _ in use], np.float64)
  in_std = np.array([s for _, s in use], np.float64)
  X = phema.solve_coefficients(in_ofs, in_std, out_images, std, max_error=max_error)
  err = float(phema.reconstruction_error(in_ofs, in_std, out_images, std, X)[0])
  graphdef, abstract = families.abstract_network(exp)
  weights = phema_snapshots.reconstruct_files([paths[u] for u in use], X[:, 0], abstract,
                                                progress=progress)
  summary = dict(workdir=workdir, std=float(std), images=int(out_images), snapshots=len(use),
                 profile_error=err)
  return exp, graphdef, weights, summary


def run(args, extra):
  import json
  import sys

  import jax
  import jax.numpy as jnp

  from jaxdiff import families
  from jaxdiff.train import checkpoint as ckpt_lib
  # Every check before anything is written: a bad --out, no snapshots, an unrepresentable std.
  check_out(args.out, args.workdir)
  cfg_dict = ckpt_lib.read_config_dict(args.workdir)
  exp, _, weights, summary = reconstruct_run(args.workdir, args.std, args.images, args.max_error,
                                             progress=True)
  weights = jax.tree.map(jnp.asarray, weights)
  ckpt_lib.ensure_writable(args.out)
  ckpt_lib.check_or_write_config(args.out, json.dumps(cfg_dict))
  state = families.train_state(exp, weights)  # params and every EMA: the reconstruction
  step = summary["images"] // exp.training.batch_size
  ckpt_lib.save_only(args.out, step, state, {"step": step, "phema": summary})
  summary["out"] = args.out
  print(f"jaxdiff phema: σ_rel {args.std:g} at {summary['images']:,} images from "
        f"{summary['snapshots']} snapshots (profile error {summary['profile_error']:.2e}) -> "
        f"{args.out}", file=sys.stderr)
  if args.json:
    print(json.dumps(summary))
  return 0
