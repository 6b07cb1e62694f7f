"""Checkpoints through orbax's CheckpointManager, and the workdir's record of its config.

Orbax writes each step into a temporary directory and renames it when complete, so an interrupted
save is never read back. The workdir's `config.json` records what the weights mean; a later run with
a config that changes that meaning is refused before anything is written.
"""

from __future__ import annotations

import json
import os

import orbax.checkpoint as ocp

from jaxdiff.errors import JaxdiffError

CONFIG_FILE = "config.json"
CKPT_DIR = "checkpoints"

# Config sections whose change makes old weights mean something else (or not fit).
_WEIGHT_DEFINING = ("model", "data.resolution", "data.channels", "data.num_classes", "precond")


def fingerprint(cfg_dict: dict) -> dict:
  out = {}
  for key in _WEIGHT_DEFINING:
    node = cfg_dict
    for part in key.split("."):
      node = node.get(part) if isinstance(node, dict) else None
    out[key] = node
  return out


def _diff(old: dict, new: dict, prefix="") -> list[str]:
  keys = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      keys += _diff(a, b, prefix + k + ".")
    elif a != b:
      keys.append(f"{prefix}{k} ({a!r} -> {b!r})")
  return keys


def ensure_writable(workdir: str) -> None:
  """Creates the workdir or fails with one line; checked before any expensive work."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise JaxdiffError(f"cannot write to workdir {workdir!r} ({e.strerror}); choose a writable "
                       "directory with --workdir") from None


def read_config_dict(workdir: str) -> dict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise JaxdiffError(f"{workdir!r} holds no jaxdiff run ({CONFIG_FILE} missing); pass the "
                       "--workdir of a `jaxdiff train` run")
  with open(path) as f:
    return json.load(f)


def check_or_write_config(workdir: str, cfg_json: str) -> None:
  """Refuses a config whose weights would not match the workdir's; records it otherwise."""
  new = json.loads(cfg_json)
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      old = json.load(f)
    changed = _diff(fingerprint(old), fingerprint(new))
    if changed:
      raise JaxdiffError(
          f"workdir {workdir!r} holds a run of another config (changed: {'; '.join(changed)}); "
          "use a new --workdir, or the original config")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(cfg_json)
  os.replace(tmp, path)  # atomic: a crash never leaves a half-written config


def manager(workdir: str, keep: int = 2, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CKPT_DIR)), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)))


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """The state at `step` (default: latest), laid out like `abstract_state`; None if none exists."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None, None
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  except (ValueError, KeyError, TypeError) as e:
    raise JaxdiffError(f"checkpoint {step} in {mngr.directory} does not fit this config's model "
                       f"({' '.join(str(e).split())[:200]}); use a new --workdir") from None
  return restored["state"], restored["meta"]
