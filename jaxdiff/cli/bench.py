"""`jaxdiff bench --config FILE.py [--json] [--batch B] [--steps K] [--config.KEY=VALUE ...]`."""


def add_arguments(parser):
  parser.add_argument("--config", required=True, help="experiment config file (configs/*.py)")
  parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
  parser.add_argument("--batch", type=int, default=None, help="batch size (default: the config's)")
  parser.add_argument("--steps", type=int, default=10, help="timed train steps (default 10)")


def run(args, extra):
  import json

  from jaxdiff import build
  from jaxdiff.bench import bench
  from jaxdiff.config import load_config
  from jaxdiff.errors import JaxdiffError
  if args.steps < 1:
    raise JaxdiffError(f"--steps must be at least 1 (got {args.steps})")
  if args.batch is not None and args.batch < 1:
    raise JaxdiffError(f"--batch must be at least 1 (got {args.batch})")
  if args.batch is not None:  # an override like any other: the config is never mutated
    extra = list(extra) + [f"--config.training.batch_size={args.batch}"]
  cfg = load_config(args.config, extra)
  result = bench(build.experiment(cfg), steps=args.steps)
  if args.json:
    print(json.dumps(result))
  else:
    for k, v in result.items():
      print(f"{k:18s} {v}")
  return 0
