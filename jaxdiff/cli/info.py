"""`jaxdiff info --config FILE.py [--json] [--config.KEY=VALUE ...]`."""


def add_arguments(parser):
  parser.add_argument("--config", required=True)
  parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args, extra):
  import json

  from jaxdiff import build
  from jaxdiff.config import load_config
  from jaxdiff.info import model_info
  cfg = load_config(args.config, extra)
  info = model_info(build.experiment(cfg))
  if args.json:
    print(json.dumps(info))
    return 0
  print(f"config {args.config}\n{cfg}")
  print(f"parameters: {info['params']:,}")
  for part, n in info["params_by_part"].items():
    print(f"  {part}: {n:,}")
  g = info["gflops_per_forward"]
  print("GFLOPs per forward (one image): " + (", ".join(f"{x:.3f}" for x in g)
                                             if isinstance(g, list) else f"{g:.3f}"))
  return 0
