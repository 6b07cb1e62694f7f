"""`jaxdiff quantize --workdir DIR --out DIR2 --bits 8|4 [--group-size G] [--json]`.

Weight-only post-training quantization (qwix) of DIR's EMA denoiser: symmetric absmax integer
weights, one scale per output channel, or per (G input channels, output channel). DIR2 is a new
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
  parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def quantize_workdir(workdir: str, spec, progress: bool = False):
  """(Experiment, graphdef, dequantized EMA weights, qwix qparams, summary dict) of `workdir`'s EMA denoiser
  quantized by `spec` (a QuantSpec). Raises JaxdiffError without a checkpoint or for a group size
  that does not divide some layer's input channels."""
  from jaxdiff import quant
  from jaxdiff.model import load
  model = load(workdir)
  exp = model.exp
  quant.check_group_size(model.params, spec.group_size)  # before the slow part
  steps = ["quantize", "dequantize"]
  it = steps
  if progress:
    from jaxdiff.progress import bar
    it = bar(steps, desc="quantize", unit="step")
  for name in it:
    if name == "quantize":
      _, qparams = quant.quantize(model.graphdef, model.params, spec, shape=exp.data.shape,
                                  label_dim=exp.label_dim)
    else:
      weights = quant.dequantize_params(model.params, qparams)
  summary = dict(workdir=workdir, **spec.to_dict(), name=spec.name,
                 integer_fraction=quant.integer_fraction(qparams),
                 bytes_quantized=quant.param_bytes(qparams),
                 bytes_float=quant.param_bytes(model.params),
                 stored="integer qvalues + scales in quantized/; dequantized float32 checkpoint")
  return exp, model.graphdef, weights, qparams, summary


def run(args, extra):
  import json
  import sys

  from jaxdiff import families
  from jaxdiff.cli.phema import check_out
  from jaxdiff.quant import QuantSpec
  from jaxdiff.train import checkpoint as ckpt_lib
  spec = QuantSpec(bits=args.bits, group_size=args.group_size)
  check_out(args.out, args.workdir)
  cfg_dict = ckpt_lib.read_config_dict(args.workdir)
  exp, _, weights, qparams, summary = quantize_workdir(args.workdir, spec, progress=True)
  cfg_dict["quant"] = {k: summary[k] for k in ("bits", "group_size", "activations", "name",
                                               "integer_fraction", "bytes_quantized",
                                               "bytes_float", "stored", "workdir")}
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
