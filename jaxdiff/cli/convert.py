"""`jaxdiff convert-edm --src FILE --config FILE.py --workdir DIR [--config.KEY=VALUE ...]`.

Imports the weights of a reference PyTorch EDM network (NVlabs/edm) or, with an EDM2 config
(model.arch = "edm2"), of an EDM2 Precond (NVlabs/edm2) -- a state dict saved as .npz, or as
.pt/.pth when torch is installed -- into a jaxdiff checkpoint (step 0, EMA = the imported
weights) that `jaxdiff sample` and `jaxdiff.load` use, and `jaxdiff train` can fine-tune.
"""

from jaxdiff.errors import JaxdiffError


def add_arguments(parser):
  parser.add_argument("--src", required=True,
                      help="reference state dict: .npz keyed by state-dict names, or .pt/.pth")
  parser.add_argument("--config", required=True,
                      help="config describing the same network (configs/cifar10_ddpmpp.py, ...)")
  parser.add_argument("--workdir", required=True, help="where to write the jaxdiff checkpoint")
  parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def convert(cfg, state_dict):
  """(config, reference state dict) -> (config with state-dict-borne values, graphdef, params)."""
  from flax import nnx

  from jaxdiff import build

  module = _converter(cfg, state_dict)
  updates = module.config_updates(state_dict)
  if updates:
    with cfg.unlocked():
      for k, v in updates.items():
        cfg.model[k] = v
  graphdef, abstract_params = build.abstract_network(cfg)
  params = module.import_state_dict(nnx.merge(graphdef, abstract_params), state_dict)
  return cfg, graphdef, params


def _converter(cfg, state_dict):
  """jaxdiff.convert.edm2 for an EDM2 config (model.arch = "edm2"), else jaxdiff.convert.edm;
  a state dict of the other kind is refused with one line."""
  from jaxdiff.convert import edm, edm2
  is_edm2_config = cfg.model.arch == "edm2"
  if is_edm2_config != edm2.is_edm2_state_dict(state_dict):
    have = "an EDM2 (NVlabs/edm2) Precond" if not is_edm2_config else "an EDM (NVlabs/edm) network"
    raise JaxdiffError(f"--src holds {have}'s state dict but the config's model.arch is "
                       f"{cfg.model.arch!r}; use a config of the same network "
                       f"({'configs/imagenet64_edm2_xs.py' if not is_edm2_config else 'configs/cifar10_ddpmpp.py'}, ...)")
  return edm2 if is_edm2_config else edm


def run(args, extra):
  import json
  import sys

  import jax
  import jax.numpy as jnp

  from jaxdiff import build, families
  from jaxdiff.config import load_config, to_json
  from jaxdiff.convert import edm
  from jaxdiff.nets.layers import count_params
  from jaxdiff.train import checkpoint as ckpt_lib

  cfg = load_config(args.config, extra)
  ckpt_lib.ensure_writable(args.workdir)
  state_dict = edm.load_state_dict(args.src)
  cfg, graphdef, params = convert(cfg, state_dict)
  params = jax.tree.map(jnp.asarray, params)

  mngr = ckpt_lib.manager(args.workdir, keep=int(cfg.training.get("keep_checkpoints", 2)),
                          async_save=False)
  if mngr.latest_step() is not None:
    mngr.close()
    raise JaxdiffError(f"workdir {args.workdir!r} already holds checkpoints; convert into a new "
                       "--workdir")
  ckpt_lib.check_or_write_config(args.workdir, to_json(cfg))
  # every EMA the config keeps (one per half-life) starts from the imported weights
  state = families.train_state(build.experiment(cfg), params)
  ckpt_lib.save(mngr, 0, state, {"step": 0, "converted_from": str(args.src)})
  mngr.wait_until_finished()
  mngr.close()

  from flax import nnx
  summary = dict(workdir=args.workdir, src=str(args.src), arch=cfg.model.arch,
                 params=count_params(nnx.merge(graphdef, params)), tensors=len(state_dict))
  print(f"jaxdiff convert-edm: wrote {args.workdir} ({summary['params']:,} parameters from "
        f"{summary['tensors']} tensors)", file=sys.stderr)
  if args.json:
    print(json.dumps(summary))
  return 0

