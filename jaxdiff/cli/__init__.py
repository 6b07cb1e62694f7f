"""The `jaxdiff` command line: parse, build, call. Each command lives in its own module.

A command module defines `add_arguments(parser)` and `run(args, extra) -> int`, where `extra` holds
the `--config.KEY=VALUE` overrides (only commands that take `--config` accept them). Modules import
JAX and friends inside `run`, so `jaxdiff --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jaxdiff import compile_cache, xla_cpu
from jaxdiff.errors import JaxdiffError

# name -> (module, one-line help)
COMMANDS = {
    "train": ("jaxdiff.cli.train", "train a model (resumes from the workdir's latest checkpoint)"),
    "sample": ("jaxdiff.cli.sample", "sample with the EMA weights of a workdir's latest checkpoint"),
    "eval": ("jaxdiff.cli.eval", "quality metrics of an npz of samples"),
    "info": ("jaxdiff.cli.info", "parameter count and GFLOPs per forward pass of a config"),
    "bench": ("jaxdiff.cli.bench", "throughput of the compiled train step and of sampling"),
    "convert-edm": ("jaxdiff.cli.convert", "import reference PyTorch EDM weights into a checkpoint"),
    "cluster": ("jaxdiff.cli.cluster", "multi-stage boundaries from the training data"),
    "compare": ("jaxdiff.cli.compare", "reproducibility: do two models map the same noise to "
                "the same image?"),
    "schedule": ("jaxdiff.cli.schedule", "optimized σ grid (GITS) of an ODE solver at an NFE "
                 "budget, for `sample --schedule`"),
    "phema": ("jaxdiff.cli.phema", "post-hoc EMA (EDM2): reconstruct an EMA width from a run's "
              "snapshots into a new workdir"),
    "quantize": ("jaxdiff.cli.quantize", "integer quantization (qwix; W8, W4, W8A8) of a run's EMA "
                 "denoiser into a new workdir"),
}


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="jaxdiff", description="Diffusion models in JAX.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for name, (module_name, help_text) in COMMANDS.items():
    p = sub.add_parser(name, help=help_text, description=help_text)
    importlib.import_module(module_name).add_arguments(p)
    p.set_defaults(_module=module_name)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = _build_parser()
  args, extra = parser.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)}")
  xla_cpu.apply()  # before any JAX computation starts a backend (XLA reads the flags then)
  compile_cache.apply()  # compiled programs persist across commands (jaxdiff/compile_cache.py)
  module = importlib.import_module(args._module)
  try:
    return int(module.run(args, extra) or 0)
  except JaxdiffError as e:
    print(f"jaxdiff {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"jaxdiff {args.command}: interrupted", file=sys.stderr)
    return 130
