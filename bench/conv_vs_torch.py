"""A lone 3x3 convolution forward, XLA:CPU against torch, at DDPM++'s shapes (issue 16).

  python bench/conv_vs_torch.py --impl jax            # XLA, with the jaxdiff commands' CPU flags
  /path/to/torch-python bench/conv_vs_torch.py --impl torch   # torch (NCHW, no_grad), not a jaxdiff dependency

Batch 32, padding 1, the model_channels 32 network's (pixels, channels in -> out); median of
--repeats calls after one warm-up, printed with the GFLOP/s they imply (2 * B * H * W * Cin * Cout
* 9 per call). Run both on an idle machine, alternated; docs/bench.md has the table.
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
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC")))
  for h, cin, cout in SHAPES:
    x, w = jnp.ones((BATCH, h, h, cin)), jnp.full((3, 3, cin, cout), 0.01)
    yield (h, cin, cout), lambda x=x, w=w: conv(x, w).block_until_ready()


def _torch_calls():
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  for h, cin, cout in SHAPES:
    x, w = torch.ones(BATCH, cin, h, h), torch.full((cout, cin, 3, 3), 0.01)

    def call(x=x, w=w):
      with torch.no_grad():
        torch.nn.functional.conv2d(x, w, padding=1)
    yield (h, cin, cout), call


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--impl", choices=("jax", "torch"), required=True)
  p.add_argument("--repeats", type=int, default=10)
  args = p.parse_args(argv)
  print(f"load average {os.getloadavg()[0]:.2f}")
  for (h, cin, cout), call in (_jax_calls() if args.impl == "jax" else _torch_calls()):
    ms = _median_ms(call, args.repeats)
    gflops = 2 * BATCH * h * h * cin * cout * 9 / ms / 1e6
    print(f"{args.impl:5s} {h}x{h} {cin}->{cout}: {ms:6.1f} ms {gflops:5.0f} GFLOP/s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
