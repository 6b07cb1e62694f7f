"""Shared body of commands whose issue has not landed yet: they say so in one line."""

from jaxdiff.errors import JaxdiffError


def pending(command: str, issue: int):
  def run(args, extra):
    raise JaxdiffError(f"`jaxdiff {command}` is not implemented yet (tracked in issue {issue}).")
  return run
