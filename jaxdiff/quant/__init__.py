"""Post-training quantization of jaxdiff denoisers through qwix (issue 14).

quantize(graphdef, params, spec, shape=, label_dim=) -> (qgraphdef, qparams) of the qwix PTQ
network; dequantize_params(params, qparams): the float tree the quantized network computes with.
"""

from jaxdiff.quant.core import (abstract_quantized, check_group_size, dequantize_params,  # noqa: F401
                                integer_fraction, param_bytes, quantize, weight_layers)
from jaxdiff.quant.spec import QuantSpec  # noqa: F401
