"""`jaxdiff train --config FILE.py --workdir DIR [--config.KEY=VALUE ...]`."""


def add_arguments(parser):
  parser.add_argument("--config", required=True, help="experiment config file (configs/*.py)")
  parser.add_argument("--workdir", required=True, help="run directory (resumed when it exists)")
  parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def run(args, extra):
  import json

  from jaxdiff.build import run_training
  from jaxdiff.config import load_config
  cfg = load_config(args.config, extra)
  summary = run_training(cfg, args.workdir)
  if args.json:
    print(json.dumps(summary))
  return 0
