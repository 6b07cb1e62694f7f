"""A lone 3x3 convolution forward, XLA:CPU against torch, at DDPM++'s shapes (issue 16).

  python bench/conv_vs_torch.py --impl jax [--grad]            # XLA, with the jaxdiff commands' CPU flags
  /path/to/torch-python bench/conv_vs_torch.py --impl torch [--grad]   # torch (NCHW), not a jaxdiff dependency

Batch 32, padding 1, the model_channels 32 network's (pixels, channels in -> out); median of
--repeats calls after one warm-up, printed with the GFLOP/s they imply (2 * B * H * W * Cin * Cout
* 9 per call). With --grad, also the gradient with respect to the input alone and to the weight
alone, given the output's cotangent (jax.vjp; torch's aten convolution_backward with one output
mask each), the two halves of a train step's backward convolution. Run both on an idle machine,
alternated; docs/bench.md has the tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

SHAPES = ((32, 64, 64), (32, 128, 64), (16, 64, 64), (16, 128, 64), (8, 64, 64))
BATCH = 32


def _median_ms(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def _jax_calls():
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from jaxdiff import xla_cpu
  xla_cpu.apply()  # before jax starts its backend
  import jax
  import jax.numpy as jnp
  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  calls = {"forward": jax.jit(lambda x, g, w: conv(x, w)),
           "input grad": jax.jit(lambda x, g, w: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0]),
           "weight grad": jax.jit(lambda x, g, w: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0])}
  for h, cin, cout in SHAPES:
    x, w = jnp.ones((BATCH, h, h, cin)), jnp.full((3, 3, cin, cout), 0.01)
    g = jnp.full((BATCH, h, h, cout), 0.1)
    for name, f in calls.items():
      yield (h, cin, cout), name, lambda f=f, x=x, g=g, w=w: f(x, g, w).block_until_ready()


def _torch_calls():
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  for h, cin, cout in SHAPES:
    x, w = torch.ones(BATCH, cin, h, h), torch.full((cout, cin, 3, 3), 0.01)
    g = torch.full((BATCH, cout, h, h), 0.1)

    def call(x=x, w=w):
      with torch.no_grad():
        torch.nn.functional.conv2d(x, w, padding=1)

    def grad(mask, x=x, g=g, w=w):
      with torch.no_grad():
        torch.ops.aten.convolution_backward(g, x, w, None, (1, 1), (1, 1), (1, 1), False, (0, 0),
                                            1, mask)
    yield (h, cin, cout), "forward", call
    yield (h, cin, cout), "input grad", lambda: grad([True, False, False])
    yield (h, cin, cout), "weight grad", lambda: grad([False, True, False])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--impl", choices=("jax", "torch"), required=True)
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--grad", action="store_true", help="also the input and weight gradients")
  args = p.parse_args(argv)
  print(f"load average {os.getloadavg()[0]:.2f}")
  for (h, cin, cout), name, call in (_jax_calls() if args.impl == "jax" else _torch_calls()):
    if name != "forward" and not args.grad:
      continue
    ms = _median_ms(call, args.repeats)
    gflops = 2 * BATCH * h * h * cin * cout * 9 / ms / 1e6
    print(f"{args.impl:5s} {h}x{h} {cin}->{cout} {name:11s}: {ms:6.1f} ms {gflops:5.0f} GFLOP/s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
