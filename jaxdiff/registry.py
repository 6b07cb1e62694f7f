"""Choosing a frozen settings class by name from a registry (precond.PRECONDS, losses.LOSSES)."""

from __future__ import annotations

import dataclasses

from jaxdiff.errors import JaxdiffError


def make_named(registry: dict, what: str, name: str, kw: dict):
  """registry[name](**kw), refusing an unknown name or option in one line naming `what`
  (e.g. "precond": the config section the user sets)."""
  if name not in registry:
    raise JaxdiffError(f"unknown {what}.name {name!r}; choose one of {sorted(registry)}")
  cls = registry[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  bad = sorted(set(kw) - fields)
  if bad:
    raise JaxdiffError(f"{what} {name!r} has no option(s) {bad}; its options are {sorted(fields)}")
  return cls(**kw)
