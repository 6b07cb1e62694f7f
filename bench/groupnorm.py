"""GroupNorm forward + backward on the CPU, one variant at a time (issue 16's kernel lever).

  python bench/groupnorm.py [--batch 32] [--repeats 20] [--json]

Shapes: DDPM++ at model_channels 32 and batch 32 (configs/cifar10_ddpmpp.py with
--config.model.model_channels=32: 64 channels at 32, 16, 8 and 4 pixels, 32 groups), the shapes
of `jaxdiff bench`'s DDPM++ row in docs/bench.md. Each variant is jitted as GroupNorm then SiLU
(how every DDPM++ block uses it) and timed forward + backward (the gradient of <y, ct> with
respect to x, weight and bias), median of --repeats calls after a warm-up call. Variants:

  two_pass     what jaxdiff.nets.layers.GroupNorm computes: mean, then mean((x - mean)^2)
  one_pass     var = mean(x^2) - mean^2: both statistics from one pass over x
  custom_vjp   two-pass forward, the closed-form backward
               dx = r * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * weight
               (jaxdiff.nets.layers.group_norm until per_channel replaced it)
  custom_vjp_one_pass   both (a copy of that backward over one-pass statistics)
  per_channel  jaxdiff.nets.layers.group_norm: custom_vjp's formulas with every group mean taken
               as per-channel sums over the pixels, then over each group's channels (the other
               variants reduce a [B, H, W, G, C/G] view whose minor axis is C/G = 2 wide)

Every variant's output and gradients are checked against two_pass (max |difference| printed).
Timings need an idle machine; the script prints the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxdiff import xla_cpu  # noqa: E402

xla_cpu.apply()  # the XLA CPU flags the jaxdiff commands run with (before jax starts)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

EPS = 1e-5


def _stats(xf, one_pass: bool):
  mean = xf.mean(axis=(1, 2, 4), keepdims=True)
  if one_pass:
    var = jnp.maximum(jnp.square(xf).mean(axis=(1, 2, 4), keepdims=True) - jnp.square(mean), 0.0)
  else:
    var = jnp.square(xf - mean).mean(axis=(1, 2, 4), keepdims=True)
  return mean, jax.lax.rsqrt(var + EPS)


def plain_group_norm(x, weight, bias, groups: int, one_pass: bool = False):
  b, h, w, c = x.shape
  xf = x.reshape(b, h, w, groups, c // groups)
  mean, r = _stats(xf, one_pass)
  return ((xf - mean) * r).reshape(b, h, w, c) * weight + bias


def make_custom_vjp(groups: int, one_pass: bool):
  @jax.custom_vjp
  def gn(x, weight, bias):
    return fwd(x, weight, bias)[0]

  def fwd(x, weight, bias):
    b, h, w, c = x.shape
    xf = x.reshape(b, h, w, groups, c // groups)
    mean, r = _stats(xf, one_pass)
    xhat = (xf - mean) * r
    return xhat.reshape(b, h, w, c) * weight + bias, (xhat, r, weight)

  def bwd(res, dy):
    xhat, r, weight = res
    b, h, w, g, k = xhat.shape
    c = g * k
    dweight = jnp.sum(dy * xhat.reshape(b, h, w, c), axis=(0, 1, 2))
    dbias = jnp.sum(dy, axis=(0, 1, 2))
    gr = (dy * weight).reshape(b, h, w, g, k)
    dx = r * (gr - gr.mean(axis=(1, 2, 4), keepdims=True)
              - xhat * (gr * xhat).mean(axis=(1, 2, 4), keepdims=True))
    return dx.reshape(b, h, w, c), dweight, dbias

  gn.defvjp(fwd, bwd)
  return gn


def variant(name: str, groups: int):
  if name == "two_pass":
    return lambda x, w, b: plain_group_norm(x, w, b, groups)
  if name == "one_pass":
    return lambda x, w, b: plain_group_norm(x, w, b, groups, one_pass=True)
  if name == "custom_vjp":  # the library's GroupNorm until its statistics became per-channel
    return make_custom_vjp(groups, False)
  if name == "per_channel":  # the library's GroupNorm: jaxdiff.nets.layers.group_norm
    from jaxdiff.nets.layers import group_norm
    return lambda x, w, b: group_norm(x, w, b, groups, EPS)
  if name == "custom_vjp_one_pass":
    return make_custom_vjp(groups, True)
  raise ValueError(name)


VARIANTS = ("two_pass", "one_pass", "custom_vjp", "custom_vjp_one_pass", "per_channel")


def grad_fn(gn):
  def loss(x, w, b, ct):
    return jnp.sum(jax.nn.silu(gn(x, w, b)) * ct)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def timed(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--channels", type=int, default=64)
  p.add_argument("--groups", type=int, default=32)
  p.add_argument("--resolutions", type=int, nargs="*", default=(32, 16, 8, 4))
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  load0 = os.getloadavg()[0]
  rows = []
  for res in args.resolutions:
    rng = np.random.default_rng(res)
    shape = (args.batch, res, res, args.channels)
    x = jnp.asarray(rng.normal(1.0, 2.0, shape), jnp.float32)
    w = jnp.asarray(rng.normal(1.0, 0.1, args.channels), jnp.float32)
    b = jnp.asarray(rng.normal(0.0, 0.1, args.channels), jnp.float32)
    ct = jnp.asarray(rng.normal(size=shape), jnp.float32)
    ref = None
    for name in VARIANTS:
      fn = grad_fn(variant(name, args.groups))
      out = fn(x, w, b, ct)
      flat = [np.asarray(out[0])] + [np.asarray(g) for g in out[1]]
      if ref is None:
        ref = flat
      diff = max(float(np.max(np.abs(a - r)) / max(np.max(np.abs(r)), 1e-30))
                 for a, r in zip(flat, ref))
      ms = 1e3 * timed(fn, (x, w, b, ct), args.repeats)
      rows.append(dict(resolution=res, variant=name, ms=ms, max_rel_diff=diff))
  base = {r["resolution"]: r["ms"] for r in rows if r["variant"] == "two_pass"}
  for r in rows:
    r["speedup"] = base[r["resolution"]] / r["ms"]
  total = {n: sum(r["ms"] for r in rows if r["variant"] == n) for n in VARIANTS}
  result = dict(batch=args.batch, channels=args.channels, groups=args.groups, rows=rows,
                total_ms=total, load_before=load0, load_after=os.getloadavg()[0],
                backend=jax.default_backend())
  if args.json:
    print(json.dumps(result))
  else:
    print(f"load average {load0:.2f} before, {result['load_after']:.2f} after")
    print("| resolution | variant | fwd+bwd ms | vs two_pass | max rel diff |")
    print("|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['resolution']} | {r['variant']} | {r['ms']:.2f} | {r['speedup']:.2f}x | "
            f"{r['max_rel_diff']:.1e} |")
    print("total ms:", {k: round(v, 2) for k, v in total.items()})
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
