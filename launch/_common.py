"""Shared by the launchers: print or run shell commands, one per line, so --dry-run shows exactly
what a real run would execute."""

from __future__ import annotations

import shlex
import subprocess
import sys


def quote(argv) -> str:
  return " ".join(shlex.quote(str(a)) for a in argv)


class Runner:
  def __init__(self, dry_run: bool):
    self.dry_run = dry_run

  def __call__(self, argv, check: bool = True, capture: bool = False):
    print(("[dry-run] " if self.dry_run else "+ ") + quote(argv), flush=True)
    if self.dry_run:
      return ""
    proc = subprocess.run(list(map(str, argv)), check=check, text=True,
                          capture_output=capture)
    return proc.stdout if capture else ""


def train_command(config: str, workdir: str, overrides) -> list[str]:
  """What every host runs: the same command; resuming is automatic from the workdir."""
  return ["python3", "-m", "jaxdiff", "train", "--config", config, "--workdir", workdir,
          *overrides]


def fail(msg: str) -> int:
  print(f"launch: error: {msg}", file=sys.stderr)
  return 2
