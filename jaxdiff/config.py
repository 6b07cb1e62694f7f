"""Loading experiment configs: an ml_collections config file plus `--config.KEY=VALUE` overrides.

Parsing is ml_collections' own (`config_flags`), on a private absl FlagValues, so no global flag
state is touched and every error becomes one line that says what to fix.
"""

from __future__ import annotations

import difflib
import json
import os

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxdiff.errors import JaxdiffError


def load_config(path: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """Reads `path` (a python file with `get_config()`) and applies `--config.KEY=VALUE` overrides."""
  if not os.path.isfile(path):
    raise JaxdiffError(f"config file {path!r} does not exist; pass one of configs/*.py")
  for o in overrides:
    if not o.startswith("--config.") or "=" not in o:
      raise JaxdiffError(f"override {o!r} must look like --config.KEY=VALUE")
  argv = ["jaxdiff", f"--config={path}", *overrides]
  fv = flags.FlagValues()
  try:
    config_flags.DEFINE_config_file("config", default=path, flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    cfg = fv.config
  except Exception as e:  # absl wraps KeyErrors / type errors in several exception types
    raise JaxdiffError(_override_message(e, path, overrides)) from None
  return cfg


def _override_message(e: Exception, path: str, overrides) -> str:
  """Turns absl's multi-line parse error into one line naming the offending override."""
  base = load_config(path) if overrides else None
  for o in overrides:
    key = o[len("--config."):].split("=", 1)[0]
    if base is not None and not _has_key(base, key):
      known = sorted(_flat_keys(base))
      close = difflib.get_close_matches(key, known, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      return f"no config key {key!r} in {path}{hint}; the keys are listed by `jaxdiff info --config {path}`"
  text = " ".join(str(e).split())
  return f"bad override for {path}: {text}"


def _has_key(cfg, dotted: str) -> bool:
  node = cfg
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def _flat_keys(cfg, prefix=""):
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _flat_keys(v, prefix + k + ".")
    else:
      yield prefix + k


def to_json(cfg: ml_collections.ConfigDict) -> str:
  return cfg.to_json_best_effort(indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))
