"""Post-training quantization of a jaxdiff network through qwix: (graphdef, params) in, out.

The quantized network is an ordinary NNX module (qwix swaps its class for one whose __call__ runs
under qwix's interception), so `nnx.merge(qgraphdef, qparams)` and every function built on it
(`train.step.make_denoiser`, `model.make_sample_fn`) run the quantized model unchanged.

Weights: symmetric absmax, one scale per output channel, or per (group of G input channels, output
channel). Activations (W8A8): static int8 ranges of the input of every conv / linear, from qwix's
quant_stats collected over calibration batches (`calibrate.trajectory_inputs`: the network inputs
at every σ a sampler visits), decoder convs on concat([h, skip]) with one range per half.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx

from jaxdiff.errors import JaxdiffError
from jaxdiff.quant import splits as splits_lib
from jaxdiff.quant.providers import CalibrationProvider, PtqProvider
from jaxdiff.quant.spec import QuantSpec

# Attention's activation x activation einsums and the FIR resampling filters are not weights;
# only the ops that multiply by a weight are quantized.
_OPS = ("conv_general_dilated", "dot_general")
_WEIGHT_NAMES = ("kernel", "weight")


def weight_layers(params) -> dict[str, tuple]:
  """{'path/of/module': weight shape} for every 2-D (linear [in, out]) or 4-D (conv HWIO) weight."""
  out = {}
  for path, leaf in nnx.to_flat_state(params):
    if path and path[-1] in _WEIGHT_NAMES and len(leaf.shape) in (2, 4):
      out["/".join(map(str, path[:-1]))] = tuple(leaf.shape)
  return out


def check_group_size(params, group_size: int | None) -> None:
  """Group-wise quantization needs G to divide the input channels of every layer wider than G (a
  layer with at most G input channels is one group: per channel)."""
  if not group_size:
    return
  for path, shape in weight_layers(params).items():
    cin = shape[-2]
    if cin > group_size and cin % group_size:
      raise JaxdiffError(f"--group-size {group_size} does not divide the {cin} input channels of "
                         f"layer {path!r}; choose a divisor of every layer's input channels")


def make_rules(params, spec: QuantSpec) -> list:
  """qwix rules: one for the whole network, preceded by per-channel rules for the layers with at
  most G input channels (qwix tiles only axes that the tile size divides)."""
  wq = jnp.int8 if spec.bits == 8 else jnp.int4
  base = dict(op_names=_OPS, weight_qtype=wq)
  if spec.activations:
    base.update(act_qtype=jnp.int8, act_static_scale=True, act_calibration_method="absmax")
  rules = []
  if spec.group_size:
    for path, shape in weight_layers(params).items():
      if shape[-2] <= spec.group_size:
        rules.append(qwix.QtRule(module_path=re.escape(path), **base))
    rules.append(qwix.QtRule(module_path=".*", tile_size=int(spec.group_size), **base))
  else:
    rules.append(qwix.QtRule(module_path=".*", **base))
  return rules


def example_inputs(shape: tuple, label_dim: int):
  """Network inputs (x, c_noise, class_labels) of batch 1; qwix runs the model once on them."""
  x = jnp.zeros((1, *shape), jnp.float32)
  c_noise = jnp.zeros((1,), jnp.float32)
  labels = jnp.zeros((1, label_dim), jnp.float32) if label_dim else None
  return x, c_noise, labels


def quantize(graphdef, params, spec: QuantSpec,
             calib_fn: Callable[[], Iterable[tuple]] | None = None, *, shape: tuple,
             label_dim: int, _require_calibration: bool = True):
  """(graphdef, params) of a float network -> (qgraphdef, qparams) of its qwix PTQ version.

  calib_fn (W8A8 only): returns an iterable of network input tuples (x_in, c_noise,
  class_labels); qwix's static-range statistics are averaged over all of them.
  """
  check_group_size(params, spec.group_size)
  net = nnx.merge(graphdef, params)
  rules = make_rules(params, spec)
  splits = splits_lib.concat_splits(net) if spec.activations else {}
  example = example_inputs(shape, label_dim)
  if spec.activations and _require_calibration:
    if calib_fn is None:
      raise JaxdiffError("W8A8 needs calibration batches (calib_fn)")
    net = calibrate(net, rules, splits, calib_fn, example)
  return _convert(net, PtqProvider(rules, splits=splits), example, nnx.Param)


def _convert(net, provider, example, *filters):
  """qwix.quantize_model(net) split into (qgraphdef, qparams), run as one compiled program:
  qwix runs the model once on the example inputs, and eager each op would be dispatched (and
  compiled) alone -- 2-10x slower on a small UNet, with bit-identical results."""
  graphdef, state = nnx.split(net)

  def convert(state):
    qnet = qwix.quantize_model(nnx.merge(graphdef, state), provider, *example)
    return nnx.split(qnet, *filters)
  return jax.jit(convert)(state)


def calibrate(net, rules, splits, calib_fn, example):
  """net with qwix quant_stats averaged over the calibration inputs (float passes, one compiled
  program: the statistics are state threaded through a jitted pure function)."""
  graphdef, state = _convert(net, CalibrationProvider(rules, splits=splits), example)

  @jax.jit
  def update(state, x_in, c_noise, labels):
    model = nnx.merge(graphdef, state)
    model(x_in, c_noise, labels)
    return nnx.state(model)
  n = 0
  for x_in, c_noise, labels in calib_fn():
    state = update(state, x_in, c_noise, labels)
    n += 1
  if n == 0:
    raise JaxdiffError("calibration produced no batches")
  return nnx.merge(graphdef, state)


def abstract_quantized(graphdef, abstract_params, spec: QuantSpec, *, shape, label_dim):
  """(qgraphdef, qparams as ShapeDtypeStructs): the restore target of a stored quantized model."""
  def fn(params):
    return quantize(graphdef, params, spec, shape=shape, label_dim=label_dim,
                    _require_calibration=False)
  return jax.eval_shape(fn, abstract_params)


def dequantize_params(params, qparams):
  """The float parameter tree of `params`' layout holding qparams' dequantized weights (qvalue ·
  scale, per tile): the float network on it computes what the quantized network computes."""
  from qwix._src.core import qarray
  flat_q = dict(nnx.to_flat_state(qparams))
  flat = []
  for path, leaf in nnx.to_flat_state(params):
    qv = flat_q.get(path + ("array", "qvalue"))
    if qv is not None:
      scale = flat_q[path + ("array", "scale")][...]
      w = qarray.dequantize(qarray.QArray(qvalue=qv[...], scale=scale, zero_point=None,
                                          qtype=qv[...].dtype))
      leaf = leaf.replace(w.astype(leaf[...].dtype))
    flat.append((path, leaf))
  return nnx.from_flat_state(flat)


def integer_fraction(qparams) -> float:
  """Fraction of parameter elements stored as integers (a check that weights are not floats)."""
  leaves = jax.tree.leaves(qparams)
  ints = sum(int(np.prod(x.shape)) for x in leaves if jnp.issubdtype(x.dtype, jnp.integer))
  return ints / max(1, sum(int(np.prod(x.shape)) for x in leaves))


def param_bytes(params) -> int:
  """Bytes of the parameter leaves at their dtypes' widths (int4: half a byte)."""
  total = 0.0
  for x in jax.tree.leaves(params):
    bits = 4 if x.dtype in (jnp.int4, jnp.uint4) else jnp.dtype(x.dtype).itemsize * 8
    total += np.prod(x.shape) * bits / 8
  return int(total)
