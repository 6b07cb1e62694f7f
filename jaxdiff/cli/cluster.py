"""`jaxdiff cluster --config FILE.py [--stages K] [--method optimal|timestep|snr] [--json]`:
stage boundaries in σ for a multi-stage model (see docs/multistage.md)."""

from __future__ import annotations


def add_arguments(parser):
  parser.add_argument("--config", required=True)
  parser.add_argument("--stages", type=int, default=3, help="number of stages K (default 3)")
  parser.add_argument("--method", default="optimal", choices=("optimal", "timestep", "snr"),
                      help="optimal: Algorithm 1 (optimal-denoiser similarity); timestep: equal "
                           "split of VP time t; snr: equal split of log-SNR")
  parser.add_argument("--alpha", type=float, default=0.9,
                      help="similarity level an end stage keeps on average (default 0.9)")
  parser.add_argument("--eta", type=float, default=2 / 255,
                      help="per-pixel tolerance on ε* (default 2/255, as the paper's code)")
  parser.add_argument("--subset", type=int, default=2000,
                      help="training images the optimal denoiser uses (default 2000)")
  parser.add_argument("--samples", type=int, default=256, help="random (y, ε) pairs (default 256)")
  parser.add_argument("--grid", type=int, default=64, help="σ grid points, log-spaced (default 64)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args, extra):
  import json

  import numpy as np

  from jaxdiff.config import load_config
  from jaxdiff.errors import JaxdiffError
  from jaxdiff.multistage import cluster

  cfg = load_config(args.config, extra)
  if args.stages < 2:
    raise JaxdiffError(f"--stages {args.stages}: a multi-stage model needs at least 2 stages")
  if not 0 < args.alpha <= 1 or args.eta <= 0:
    raise JaxdiffError("--alpha must be in (0, 1] and --eta positive")
  smin, smax = float(cfg.sampler.sigma_min), float(cfg.sampler.sigma_max)
  out = dict(method=args.method, stages=args.stages, sigma_min=smin, sigma_max=smax)
  if args.method == "optimal":
    from jaxdiff import build
    source = build.make_source(cfg)
    n = min(args.subset, len(source))
    idx = np.sort(np.random.default_rng(args.seed).choice(len(source), n, replace=False))
    images, _ = source.get(idx)
    res = cluster.optimal_boundaries(images, args.stages, sigma_min=smin, sigma_max=smax,
                                     alpha=args.alpha, eta=args.eta, grid=args.grid,
                                     num_samples=args.samples, seed=args.seed, progress=True)
    out.update(alpha=args.alpha, eta=args.eta, subset=int(n), **res)
  elif args.method == "timestep":
    out["boundaries_sigma"] = cluster.timestep_boundaries(args.stages, sigma_min=smin,
                                                          sigma_max=smax)
  else:
    out["boundaries_sigma"] = cluster.snr_boundaries(args.stages, sigma_min=smin, sigma_max=smax)
  if args.json:
    print(json.dumps(out))
    return 0
  print(f"{args.method} boundaries (σ) for {args.stages} stages: "
        + ", ".join(f"{b:.4g}" for b in out["boundaries_sigma"]))
  print(f"config: model.stage_boundaries = ({', '.join(f'{b:.4g}' for b in out['boundaries_sigma'])},)")
  return 0
