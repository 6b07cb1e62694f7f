"""qwix providers with the two conv cases qwix 0.1.8 leaves out, plus Q-Diffusion's split.

qwix's PtqProvider refuses weight-only convolutions ("conv_general_dilated requires same act_qtype
and weight_qtype") and has no sub-channel (group-wise) convolution; its QtProvider asserts that a
convolution's kernel is a parameter, which the constant FIR resampling filters of SongUNet are not.
These subclasses override `conv_general_dilated` only, and do all quantization with qwix's own
pieces (HowToQuantize, create_quantized_param, quantize_act, qwix.conv_general_dilated, the
quant_stats moving average): no kernel is written here.

Split convolutions (Q-Diffusion): a decoder conv whose input is concat([h, skip]) along channels
gets one static activation scale per half. conv(concat(a, b), W) = conv(a, W[.., :n, :]) +
conv(b, W[.., n:, :]) exactly, so each half is quantized with its own scale and convolved with its
slice of the (one, per-output-channel) quantized kernel; the partial results are summed.
"""

from __future__ import annotations

import dataclasses
import re

import jax
from qwix._src.core import conv_general
from qwix._src.core import dot_general
from qwix._src.core import qarray
from qwix._src.providers import ptq, qt
from qwix._src.utils import flax_util
import qwix


def _conv_kwargs(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                 feature_group_count, batch_group_count):
  return dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
              rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
              feature_group_count=feature_group_count, batch_group_count=batch_group_count)


def _split_at(splits: dict, module_path: str) -> int | None:
  for pattern, n in splits.items():
    if re.fullmatch(pattern, module_path):
      return n
  return None


def _current_path() -> str:
  return "/".join(map(str, flax_util.get_current_module_path()))


def _in_axis(dn) -> int:
  return dn.rhs_spec[1]


def _lhs_feature_axis(dn) -> int:
  return dn.lhs_spec[1]


def _slice(x, axis: int, start: int, stop: int):
  idx = [slice(None)] * x.ndim
  idx[axis] = slice(start, stop)
  return x[tuple(idx)]


def _slice_qarray(q: qarray.QArray, axis: int, start: int, stop: int) -> qarray.QArray:
  """A slice of a per-output-channel QArray along an axis whose scale is shared (size 1)."""
  assert q.scale.shape[axis] == 1 and q.zero_point is None
  return dataclasses.replace(q, qvalue=_slice(q.qvalue, axis, start, stop))


class PtqProvider(ptq.PtqProvider):
  """qwix PTQ with weight-only / group-wise convolutions and split concat inputs.

  `splits` maps a module-path regex to the channel count of the first half of that module's conv
  input (see `jaxdiff.quant.splits`).
  """

  def __init__(self, rules, *, splits: dict | None = None, **kwargs):
    super().__init__(rules, **kwargs)
    self.splits = dict(splits or {})

  def conv_general_dilated(self, lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                           batch_group_count=1, precision=None, preferred_element_type=None,
                           out_sharding=None):
    kw = _conv_kwargs(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                      feature_group_count, batch_group_count)
    is_weight = (isinstance(rhs, (ptq.WithAux, qarray.QArray))
                 or flax_util.find_param(rhs) is not None)
    if not is_weight:  # a constant filter (FIR resampling): not a weight, stays float
      return jax.lax.conv_general_dilated(lhs, rhs, precision=precision,
                                          preferred_element_type=preferred_element_type, **kw)
    rule, op_id = self._get_current_rule_and_op_id("conv_general_dilated")
    if rule is None or rule.weight_qtype is None:
      return jax.lax.conv_general_dilated(lhs, rhs, precision=precision,
                                          preferred_element_type=preferred_element_type, **kw)
    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    kw["dimension_numbers"] = dn
    if isinstance(rhs, ptq.WithAux):
      rhs_q = rhs.array
    elif isinstance(rhs, qarray.QArray):  # `weight[...]` of an already quantized kernel
      rhs_q = rhs
    else:
      how = conv_general.get_how_to_quantize(dimension_numbers=dn, for_lhs=False,
                                             qtype=rule.weight_qtype,
                                             calibration_method=rule.weight_calibration_method)
      if rule.tile_size and rhs.shape[_in_axis(dn)] > rule.tile_size:
        # Group-wise: tiles of `tile_size` input channels, one scale per (tile, output channel).
        how = dataclasses.replace(how, tiled_axes={_in_axis(dn): rule.tile_size})
      rhs_q = ptq.create_quantized_param(flax_util.find_param(rhs), rhs, how,
                                         _qarray_module=self._qarray_module).array
    if rule.act_qtype is None:
      # Weight-only: qwix's conv dequantizes the kernel and convolves in float.
      return qwix.conv_general_dilated(lhs, rhs_q, **kw)
    if qarray.get_tiled_axes(rhs_q):
      raise ValueError("qwix has no sub-channel conv with quantized activations")
    lhs_how = conv_general.get_how_to_quantize(dimension_numbers=dn, for_lhs=True,
                                               qtype=rule.act_qtype,
                                               calibration_method=rule.act_calibration_method)
    n = _split_at(self.splits, _current_path())
    if n is None or feature_group_count != 1:
      lhs_q = ptq.quantize_act(lhs, lhs_how, rule, op_id + "_lhs",
                               _qarray_module=self._qarray_module)
      return qwix.conv_general_dilated(lhs_q, rhs_q, **kw)
    c = lhs.shape[_lhs_feature_axis(dn)]
    out = 0
    for name, (a, b) in ((op_id + "_lhs", (0, n)), (op_id + "_lhs_b", (n, c))):
      lhs_q = ptq.quantize_act(_slice(lhs, _lhs_feature_axis(dn), a, b), lhs_how, rule, name,
                               _qarray_module=self._qarray_module)
      out = out + qwix.conv_general_dilated(lhs_q, _slice_qarray(rhs_q, _in_axis(dn), a, b), **kw)
    return out


class CalibrationProvider(qt.QtProvider):
  """qwix's QtProvider for collecting static activation ranges (quant_stats) in float passes.

  Every conv / linear input's statistic is recorded with qwix's own calibrate and moving average
  (`_update_and_get_quant_stat`, the names PtqProvider reads: `<op>_lhs`, and `<op>_lhs_b` for the
  second half of a split conv) and the op then runs in float. Unlike qwix's QAT forward, nothing
  is fake-quantized, and no statistic is written inside qwix's conv custom_vjp, which is what
  lets the calibration passes run under jax.jit (qwix 0.1.8 updates a conv's QuantStat inside
  `conv_general_qt_fwd`, and flax 0.12 refuses that mutation from the inner trace:
  TraceContextError). Constant (non-parameter) kernels are left alone.
  """

  def __init__(self, rules, *, splits: dict | None = None, **kwargs):
    super().__init__(rules, **kwargs)
    self.splits = dict(splits or {})

  def _static_rule(self, op_name: str):
    rule, op_id = self._get_current_rule_and_op_id(op_name)
    if rule is None or rule.act_qtype is None or not rule.act_static_scale:
      return None, op_id
    return rule, op_id

  def conv_general_dilated(self, lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                           batch_group_count=1, precision=None, preferred_element_type=None,
                           out_sharding=None):
    kw = _conv_kwargs(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                      feature_group_count, batch_group_count)
    float_conv = lambda: jax.lax.conv_general_dilated(  # noqa: E731
        lhs, rhs, precision=precision, preferred_element_type=preferred_element_type, **kw)
    if flax_util.find_param(rhs) is None:
      return float_conv()
    rule, op_id = self._static_rule("conv_general_dilated")
    if rule is None:
      return float_conv()
    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    how = conv_general.get_how_to_quantize(dimension_numbers=dn, for_lhs=True,
                                           qtype=rule.act_qtype,
                                           calibration_method=rule.act_calibration_method)
    axis = _lhs_feature_axis(dn)
    c = lhs.shape[axis]
    n = _split_at(self.splits, _current_path())
    parts = ([(op_id + "_lhs", (0, c))] if n is None or feature_group_count != 1 else
             [(op_id + "_lhs", (0, n)), (op_id + "_lhs_b", (n, c))])
    for name, (a, b) in parts:
      self._update_and_get_quant_stat(name, tuple(rule.act_batch_axes),
                                      qarray.calibrate(_slice(lhs, axis, a, b), how))
    return float_conv()

  def dot_general(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                  *, out_sharding=None):
    float_dot = lambda: jax.lax.dot_general(  # noqa: E731
        lhs, rhs, dimension_numbers, precision=precision,
        preferred_element_type=preferred_element_type)
    rule, op_id = self._static_rule("dot_general")
    if rule is None:
      return float_dot()
    if flax_util.find_param(lhs) is not None or flax_util.find_param(rhs) is None:
      # Only activation x weight products are quantized (PtqProvider's quantize_act on lhs).
      return super().dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type,
                                 out_sharding=out_sharding)
    how = dot_general.get_how_to_quantize(dimension_numbers=dimension_numbers,
                                          ndims=(lhs.ndim, rhs.ndim), for_lhs=True,
                                          qtype=rule.act_qtype, tile_size=rule.tile_size,
                                          calibration_method=rule.act_calibration_method)
    self._update_and_get_quant_stat(op_id + "_lhs", tuple(rule.act_batch_axes),
                                    qarray.calibrate(lhs, how))
    return float_dot()
