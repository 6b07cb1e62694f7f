"""`jaxdiff sample --workdir DIR --num N --out FILE.npz [--seed S] [--solver NAME] [--steps K]
[--label C] [--grid FILE.png]`."""


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


def run(args, extra):
  import os
  import time

  import numpy as np

  from jaxdiff.errors import JaxdiffError
  from jaxdiff.images import save_grid
  from jaxdiff.model import load
  if not args.out.endswith(".npz"):
    raise JaxdiffError(f"--out {args.out!r} must end in .npz")
  out_dir = os.path.dirname(os.path.abspath(args.out))
  if not os.access(out_dir, os.W_OK):
    raise JaxdiffError(f"cannot write {args.out!r}: directory {out_dir!r} is not writable")
  model = load(args.workdir, ema=not args.raw)
  t0 = time.time()
  images, labels = model.sample_with_labels(args.num, seed=args.seed, label=args.label,
                                            solver=args.solver, steps=args.steps,
                                            batch_size=args.batch, progress=True)
  arrays = {"images": images}
  if labels is not None:
    arrays["labels"] = labels.astype(np.int32)
  tmp = args.out[:-4] + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, args.out)  # never leave a half-written sample file under the requested name
  if args.grid:
    save_grid(images[:256], args.grid)
  import sys
  print(f"jaxdiff sample: {args.num} images in {time.time() - t0:.1f} s -> {args.out}",
        file=sys.stderr)
  return 0
