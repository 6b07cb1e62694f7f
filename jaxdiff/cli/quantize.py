"""`jaxdiff quantize --workdir DIR --out DIR2 --bits 8|4 [--group-size G] [--activations
[--calib-num N] [--calib-seed S]] [--json]`.

Post-training quantization (qwix) of DIR's EMA denoiser: symmetric absmax integer weights, one
scale per output channel, or per (G input channels, output channel). --activations (W8A8) adds
static int8 ranges of every conv / linear input, calibrated on the inputs the network gets along
DIR's own sampler trajectories (its solver, steps, σ grid and guidance) from N fixed latents, at
every noise level the sampler visits (timestep-aware calibration; jaxdiff/quant/calibrate.py).
DIR2 is a new
workdir that `jaxdiff sample`, `jaxdiff eval` and `jaxdiff.load` use like any other: DIR's config
plus a `quant` record (spec, integer fraction, bytes at integer width); `quantized/`, an orbax item
of qwix's integer qvalues (int8 / int4) and float32 scales, which `jaxdiff.load` restores and runs
as the qwix network; and an ordinary checkpoint of the DEQUANTIZED weights (qvalue · scale,
float32; the float network on them computes exactly what the qwix network computes,
tests/test_quant.py) for code that restores checkpoints directly. That float copy means DIR2 is not
smaller on disk than DIR yet; dropping it needs every restore path to go through jaxdiff.load.
"""


def add_arguments(parser):
  parser.add_argument("--workdir", required=True, help="a trained run (its latest checkpoint)")
  parser.add_argument("--out", required=True, help="new workdir (absent or empty)")
  parser.add_argument("--bits", type=int, required=True, help="integer weight width: 8 or 4")
  parser.add_argument("--group-size", type=int, default=None,
                      help="one scale per G input channels (group-wise; default per channel)")
  parser.add_argument("--activations", action="store_true",
                      help="also quantize activations (W8A8, static ranges; needs --bits 8)")
  parser.add_argument("--calib-num", type=int, default=64,
                      help="--activations: sampler trajectories to calibrate on (default 64)")
  parser.add_argument("--calib-seed", type=int, default=0,
                      help="--activations: seed of the calibration latents (default 0)")
  parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def quantize_workdir(workdir: str, spec, progress: bool = False, calib_num: int = 64,
                     calib_seed: int = 0):
  """(Experiment, graphdef, dequantized EMA weights, qwix qparams, summary dict) of `workdir`'s
  EMA denoiser quantized by `spec` (a QuantSpec); W8A8 calibrated along the workdir's sampler trajectories from
  `calib_num` latents of seed `calib_seed`. Raises JaxdiffError without a checkpoint, for an
  already quantized workdir, or for a group size that does not divide some layer's input
  channels."""
  from jaxdiff import quant
  from jaxdiff.errors import JaxdiffError
  from jaxdiff.model import load
  from jaxdiff.quant import store
  from jaxdiff.train import checkpoint as ckpt_lib
  if store.spec_of(ckpt_lib.read_config_dict(workdir)) is not None:
    raise JaxdiffError(f"{workdir!r} is already quantized; quantize the float run it came from")
  model = load(workdir)
  exp = model.exp
  quant.check_group_size(model.params, spec.group_size)  # before the slow part
  steps = (["calibrate"] if spec.activations else []) + ["quantize", "dequantize"]
  it = steps
  if progress:
    from jaxdiff.progress import bar
    it = bar(steps, desc="quantize", unit="step")
  calib, calib_fn = None, None
  for name in it:
    if name == "calibrate":
      calib, calib_fn = calibration_set(model, calib_num, calib_seed)
    elif name == "quantize":
      _, qparams = quant.quantize(model.graphdef, model.params, spec, calib_fn,
                                  shape=exp.data.shape, label_dim=exp.label_dim)
    else:
      weights = quant.dequantize_params(model.params, qparams)
  summary = dict(workdir=workdir, **spec.to_dict(), name=spec.name, calibration=calib,
                 integer_fraction=quant.integer_fraction(qparams),
                 bytes_quantized=quant.param_bytes(qparams),
                 bytes_float=quant.param_bytes(model.params),
                 stored="integer qvalues + scales" + (" + static activation scales" if
                                                      spec.activations else "") +
                 " in quantized/; dequantized float32 checkpoint (weights only)")
  return exp, model.graphdef, weights, qparams, summary


def calibration_set(model, num: int, seed: int):
  """({solver, steps, nfe, num, seed, sigmas}, calib_fn): the network inputs of `model`'s own
  sampler from `num` latents of `seed`, one batch per network evaluation, for quant.quantize."""
  from jaxdiff.quant import calibrate
  visits = calibrate.trajectory_visits(model, num, seed)
  inputs = calibrate.network_inputs(model.precond, visits)
  kw = model.sampler_kwargs()
  rec = dict(solver=kw["solver"], steps=kw["num_steps"], nfe=len(visits), num=int(num),
             seed=int(seed), sigmas=[float(v.sigma[0]) for v in visits])
  return rec, lambda: iter(inputs)


def run(args, extra):
  import json
  import sys

  from jaxdiff import families
  from jaxdiff.cli.phema import check_out
  from jaxdiff.quant import QuantSpec
  from jaxdiff.train import checkpoint as ckpt_lib
  spec = QuantSpec(bits=args.bits, group_size=args.group_size, activations=args.activations)
  check_out(args.out, args.workdir)
  cfg_dict = ckpt_lib.read_config_dict(args.workdir)
  exp, _, weights, qparams, summary = quantize_workdir(args.workdir, spec, progress=True,
                                                       calib_num=args.calib_num,
                                                       calib_seed=args.calib_seed)
  cfg_dict["quant"] = {k: summary[k] for k in ("bits", "group_size", "activations", "name",
                                               "integer_fraction", "bytes_quantized",
                                               "bytes_float", "stored", "workdir",
                                               "calibration")}
  ckpt_lib.ensure_writable(args.out)
  ckpt_lib.check_or_write_config(args.out, json.dumps(cfg_dict))
  state = families.train_state(exp, weights)  # params and every EMA: the quantized weights
  ckpt_lib.save_only(args.out, 0, state, {"step": 0, "quant": cfg_dict["quant"]})
  from jaxdiff.quant import store
  store.save_quantized(args.out, qparams)  # what jaxdiff.load restores (integer weights)
  summary["out"] = args.out
  print(f"jaxdiff quantize: {spec.name} ({summary['integer_fraction']:.1%} of weights integer, "
        f"{summary['bytes_quantized']:,} bytes at integer width vs {summary['bytes_float']:,}) "
        f"-> {args.out}", file=sys.stderr)
  if args.json:
    print(json.dumps(summary))
  return 0
