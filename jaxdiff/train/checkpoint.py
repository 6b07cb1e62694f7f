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
_WEIGHT_DEFINING = ("model", "data.resolution", "data.channels", "data.num_classes", "precond",
                    # a consistency model's weights mean f, with its boundary at sigma_min
                    "consistency.mode", "consistency.sigma_min", "consistency.sigma_max",
                    # the adversarial family's discriminator, checkpointed in TrainState.aux
                    "adversarial.disc")
# Keys inside those sections that change how the step computes, not what the weights mean.
_COMPUTE_ONLY = ("remat",)


def fingerprint(cfg_dict: dict) -> dict:
  out = {}
  for key in _WEIGHT_DEFINING:
    node = cfg_dict
    for part in key.split("."):
      node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node = {k: v for k, v in node.items() if k not in _COMPUTE_ONLY}
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


# Model keys a workdir records from its weights (convert-edm's NCSN++ Fourier frequencies, a buffer
# of the reference network) that config files leave out: a run on that workdir takes the record's.
# EDM2's MPFourier buffers likewise (jaxdiff.convert.edm2.BUFFERS).
_RECORDED = ("fourier_freqs", "emb_fourier_freqs", "emb_fourier_phases", "logvar_fourier_freqs",
             "logvar_fourier_phases")


def recorded_model_keys(workdir: str, model: dict) -> dict:
  """The _RECORDED model keys of the workdir's config.json that `model` (a plain dict of the
  config's model section) leaves unset: {key: recorded value}, for the caller to adopt."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    recorded = (json.load(f).get("model") or {})
  return {key: recorded[key] for key in _RECORDED
          if recorded.get(key) is not None and model.get(key) is None}


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
  from jaxdiff.fileio import atomic_write_text
  atomic_write_text(path, cfg_json)  # a crash never leaves a half-written config


def manager(workdir: str, keep: int = 2, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CKPT_DIR)), options=options)


def checksum(trees: dict) -> list[float]:
  """Σ|x| of each {field: tree} (pack's stored form; see packing.abs_sum): recorded with each
  save and checked on restore, so a checkpoint whose bytes changed after writing is never trained
  on."""
  from jaxdiff.train import packing
  return _packed_checksum({name: packing.pack(tree) for name, tree in trees.items()}, trees)


# meta["layout"] of checkpoints whose fields are stored by train.packing (small arrays as one
# vector per dtype); checkpoints without it hold one orbax array per leaf and still restore.
PACKED = "packed-1"


def _fields(state) -> dict:
  """A TrainState (or its abstract) as {field: subtree}, without `aux` when that is None (every
  family but the adversarial one), so such checkpoints keep the tree they had before
  TrainState.aux existed."""
  import dataclasses
  return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
          if not (f.name == "aux" and getattr(state, "aux", None) is None)}


def _on_disk(state):
  """The tree a per-leaf (pre-packing) checkpoint of `state` holds: the TrainState itself when
  it has an aux, else its `_fields` dict."""
  return state if getattr(state, "aux", None) is not None else _fields(state)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  from jaxdiff.train import packing
  stored = {name: packing.pack(tree) for name, tree in _fields(state).items()}
  meta = dict(meta, checksum=_packed_checksum(stored, _CHECKSUMMED), layout=PACKED)
  # PyTreeSave, as every restore here is a PyTreeRestore: a manager keeps the handler an item was
  # first used with, and refuses the other kind.
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(stored),
                                          meta=ocp.args.JsonSave(meta)))


def save_only(workdir: str, step: int, state, meta: dict) -> None:
  """A workdir's one checkpoint, written and finished before returning (commands that make a
  workdir from another: phema, quantize)."""
  mngr = manager(workdir, keep=1, async_save=False)
  try:
    save(mngr, step, state, meta)
    mngr.wait_until_finished()
  finally:
    mngr.close()


def _current_layout(abstract, default=None):
  """ShapeDtypeStructs that all carry a sharding of this process's devices.

  Orbax otherwise lays a restored array out as it was saved, which fails ("Topology mismatch
  detected") when the checkpoint was written on another number of devices; leaves without a
  sharding land on `default` (this host's first device).
  """
  import jax
  default = default or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(a):
    sharding = getattr(a, "sharding", None)
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding or default)
  return jax.tree.map(leaf, abstract)


def _read_meta(mngr, step) -> dict:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {}


# The fields whose Σ|x| each checkpoint records, in the order of its meta's checksum list.
_CHECKSUMMED = ("params", "ema", "opt_state")


def _packed_checksum(stored: dict, names) -> list[float]:
  from jaxdiff.train import packing
  return [packing.abs_sum(stored[name]) for name in names]


def _check(got, want) -> None:
  import numpy as np
  if not np.allclose(got, want, rtol=1e-5, atol=1e-6):
    raise ValueError(f"checksum {got} differs from the saved {want}")


def _per_leaf_restore(target, partial: bool = False):
  """Orbax's restore of a checkpoint with one array per leaf into `target`'s layout."""
  import jax
  restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(
      sharding=a.sharding, global_shape=a.shape, dtype=a.dtype), target)
  return ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=partial)


def _restore_packed(mngr, step, abstract_fields: dict, want: dict) -> dict:
  """{field: tree} of a PACKED checkpoint, for the fields of `abstract_fields` only; `want` maps
  fields to their recorded Σ|x|, checked before anything is placed on a device."""
  from jaxdiff.train import packing
  targets = {name: _current_layout(tree) for name, tree in abstract_fields.items()}
  items = {name: packing.packed_target(tree) for name, tree in targets.items()}
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={name: item for name, (item, _) in items.items()},
      restore_args={name: args for name, (_, args) in items.items()},
      partial_restore=True)))["state"]
  if want:
    _check(_packed_checksum(restored, want), list(want.values()))
  return {name: packing.unpack(restored[name], targets[name]) for name in targets}


def _recorded(meta: dict, names) -> dict:
  """{field: recorded Σ|x|} for `names` (empty for a checkpoint that recorded none)."""
  if "checksum" not in meta:
    return {}
  return {name: meta["checksum"][_CHECKSUMMED.index(name)] for name in names}


def _restore_one(mngr, abstract_state, step):
  meta = _read_meta(mngr, step)
  if meta.get("layout") == PACKED:
    fields = _fields(abstract_state)
    state = abstract_state.replace(**_restore_packed(mngr, step, fields,
                                                     _recorded(meta, _CHECKSUMMED)))
    return state, meta
  # One orbax array per leaf (checkpoints written before the packed layout).
  state = mngr.restore(step, args=ocp.args.Composite(
      state=_per_leaf_restore(_current_layout(_on_disk(abstract_state)))))["state"]
  if isinstance(state, dict):  # saved without aux (see _on_disk)
    state = abstract_state.replace(**state)
  if "checksum" in meta:
    _check(checksum({name: getattr(state, name) for name in _CHECKSUMMED}), meta["checksum"])
  return state, meta


# The TrainState fields restore_weights reads.
_WEIGHTS = ("params", "ema")


def _restore_weights_one(mngr, abstract_params, step):
  """Only state.params and state.ema of checkpoint `step` (orbax partial restore): the optimizer
  state and extra EMAs are never read. Both are read so both recorded checksums are checked."""
  meta = _read_meta(mngr, step)
  if meta.get("layout") == PACKED:
    weights = _restore_packed(mngr, step, {name: abstract_params for name in _WEIGHTS},
                              _recorded(meta, _WEIGHTS))
    return weights, meta
  target = _current_layout(abstract_params)
  weights = mngr.restore(step, args=ocp.args.Composite(state=_per_leaf_restore(
      {name: target for name in _WEIGHTS}, partial=True)))["state"]
  if "checksum" in meta:
    # By name: orbax hands the dict back in its own key order.
    _check(checksum({name: weights[name] for name in _WEIGHTS}),
           list(_recorded(meta, _WEIGHTS).values()))
  return weights, meta


def restore_weights(workdir_or_manager, abstract_params, which: str = "ema",
                    step: int | None = None):
  """The EMA (`which="ema"`) or raw (`"params"`) weights of a run, laid out on this process's
  devices whatever device count wrote them; None if the run has no checkpoint yet.

  A partial restore: no optimizer is built and its moments are never read. Unreadable or corrupt
  checkpoints are skipped as in `restore` (never quarantined: readers leave the workdir as it is).
  """
  if which not in _WEIGHTS:
    raise ValueError(f"which={which!r}; use one of {sorted(_WEIGHTS)}")
  own = isinstance(workdir_or_manager, str)
  mngr = manager(workdir_or_manager, async_save=False) if own else workdir_or_manager
  try:
    weights, _ = _first_readable(mngr, step, False,
                                 lambda s: _restore_weights_one(mngr, abstract_params, s))
  finally:
    if own:
      mngr.close()
  return None if weights is None else weights[which]


def _warn(msg: str) -> None:
  import sys
  print(f"jaxdiff: warning: {msg}", file=sys.stderr, flush=True)


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None,
            quarantine: bool = False):
  """The state at `step` (default: the newest readable one), laid out like `abstract_state`;
  (None, None) if there is none.

  Without a step, an unreadable or corrupt checkpoint is skipped with a warning and the one before
  it is tried; with `quarantine` (the trainer) it is also moved to `checkpoints_corrupt/` so the
  step can be written again. It is never loaded.
  """
  return _first_readable(mngr, step, quarantine, lambda s: _restore_one(mngr, abstract_state, s))


def _first_readable(mngr, step, quarantine, read):
  """read(step) for `step`, or for the newest step it succeeds on (see `restore`)."""
  if step is not None:
    steps = [step]
  else:
    steps = sorted(mngr.all_steps(), reverse=True)
  failed = []
  for s in steps:
    try:
      out = read(s)
    except Exception as e:  # orbax / tensorstore raise many types for missing or garbled files
      reason = " ".join(str(e).split())[:200]
      if step is not None or (len(steps) == 1 and _looks_like_mismatch(e)):
        raise JaxdiffError(f"checkpoint {s} in {mngr.directory} cannot be read with this config's "
                           f"model ({reason}); use a new --workdir") from None
      _warn(f"checkpoint {s} in {mngr.directory} is partial or corrupt ({reason}); skipping it")
      failed.append((s, reason))
      continue
    # Only once an older checkpoint has loaded: a config mismatch fails every step and moves none.
    if quarantine:
      for bad, _ in failed:
        _quarantine(mngr, bad)
    return out
  if failed:
    raise JaxdiffError(f"no readable checkpoint in {mngr.directory} (newest: {failed[0][1]}); "
                       "use a new --workdir, or the config it was trained with")
  return None, None


def _looks_like_mismatch(e: Exception) -> bool:
  return isinstance(e, (KeyError, TypeError)) or "shape" in str(e).lower() or "tree" in str(e)


def _quarantine(mngr, step: int) -> None:
  import shutil
  src = os.path.join(str(mngr.directory), str(step))
  dst_dir = os.path.join(os.path.dirname(str(mngr.directory)), "checkpoints_corrupt")
  os.makedirs(dst_dir, exist_ok=True)
  dst = os.path.join(dst_dir, f"{step}")
  n = 0
  while os.path.exists(dst):
    n += 1
    dst = os.path.join(dst_dir, f"{step}.{n}")
  if os.path.exists(src):
    shutil.move(src, dst)
  mngr.reload()
