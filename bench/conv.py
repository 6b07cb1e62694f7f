"""3x3 convolution forward + backward on the CPU, one lowering at a time (issue 16's kernel lever).

  python bench/conv.py [--batch 32] [--channels 64] [--repeats 10] [--json]

docs/bench.md found a lone 3x3 convolution at 32x32x64 running at 73 GFLOP/s in XLA:CPU where a
matmul of the same FLOPs ran at 154 GFLOP/s. This times the convolution of DDPM++ at
model_channels 32, batch 32 (64 -> 64 channels at 32, 16 and 8 pixels, NHWC / HWIO, padding 1)
three ways, each jitted as the gradient of <conv(x, w), ct> with respect to x and w (what a
train step runs) and as the forward alone (what sampling runs):

  lax      jax.lax.conv_general_dilated (XLA's convolution emitter; what jaxdiff computed before)
  im2col   the 9 shifted views of the padded input concatenated on channels, one dot_general
           with the [9*C_in, C_out] weight
  shifts   the sum of 9 dot_generals, one per kernel tap, on shifted views (no 9x patch buffer)

Every variant's output and gradients are checked against lax (max |difference| printed). Times are
medians of --repeats calls after a warm-up call; the machine must be idle (load average printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxdiff import xla_cpu  # noqa: E402

xla_cpu.apply()  # the XLA CPU flags the jaxdiff commands run with (before jax starts)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from groupnorm import timed  # noqa: E402  (median of repeated calls after a warm-up call)

_DN = ("NHWC", "HWIO", "NHWC")


def conv_lax(x, w):
  p = w.shape[0] // 2
  return jax.lax.conv_general_dilated(x, w, (1, 1), [(p, p), (p, p)], dimension_numbers=_DN)


def conv_im2col(x, w):
  k, _, c, o = w.shape
  p = k // 2
  _, h, wd, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  patches = jnp.concatenate([xp[:, i:i + h, j:j + wd, :] for i in range(k) for j in range(k)],
                            axis=-1)
  return jax.lax.dot_general(patches, w.reshape(k * k * c, o), (((3,), (0,)), ((), ())))


def conv_shifts(x, w):
  k = w.shape[0]
  p = k // 2
  _, h, wd, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = None
  for i in range(k):
    for j in range(k):
      term = jnp.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + wd, :], w[i, j])
      out = term if out is None else out + term
  return out


def variant(name: str):
  if name == "lax":
    return conv_lax
  if name == "im2col":
    return conv_im2col
  if name == "shifts":
    return conv_shifts
  raise ValueError(name)


VARIANTS = ("lax", "im2col", "shifts")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--channels", type=int, default=64)
  p.add_argument("--resolutions", type=int, nargs="+", default=[32, 16, 8])
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  load_before = os.getloadavg()[0]
  rng = np.random.default_rng(0)
  c = args.channels
  w = jnp.asarray(rng.standard_normal((3, 3, c, c)).astype(np.float32) / np.sqrt(9 * c))
  rows = []
  for res in args.resolutions:
    x = jnp.asarray(rng.standard_normal((args.batch, res, res, c)).astype(np.float32))
    ct = jnp.asarray(rng.standard_normal((args.batch, res, res, c)).astype(np.float32))
    flops = 2 * args.batch * res * res * 9 * c * c
    ref_y = ref_g = None
    for name in VARIANTS:
      conv = variant(name)
      fwd = jax.jit(conv)
      grad = jax.jit(jax.grad(lambda x, w, ct, conv=conv: jnp.sum(conv(x, w) * ct), argnums=(0, 1)))
      y, g = fwd(x, w), grad(x, w, ct)
      if ref_y is None:
        ref_y, ref_g = y, g
      err = max(float(jnp.max(jnp.abs(y - ref_y))),
                *(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g, ref_g)))
      t_fwd = timed(fwd, (x, w), args.repeats)
      t_grad = timed(grad, (x, w, ct), args.repeats)
      rows.append(dict(resolution=res, variant=name, fwd_ms=1e3 * t_fwd, grad_ms=1e3 * t_grad,
                       fwd_gflops=flops / t_fwd / 1e9, grad_gflops=2 * flops / t_grad / 1e9,
                       max_abs_diff=err))
  result = dict(batch=args.batch, channels=c, rows=rows, load_before=load_before,
                load_after=os.getloadavg()[0], backend=jax.default_backend())
  if args.json:
    print(json.dumps(result))
  else:
    print(f"load average before {load_before:.2f}, after {result['load_after']:.2f}")
    print("| res | variant | fwd ms | GFLOP/s | grad (x, w) ms | GFLOP/s | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
      print(f"| {r['resolution']} | {r['variant']} | {r['fwd_ms']:.1f} | {r['fwd_gflops']:.0f} | "
            f"{r['grad_ms']:.1f} | {r['grad_gflops']:.0f} | {r['max_abs_diff']:.1e} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
