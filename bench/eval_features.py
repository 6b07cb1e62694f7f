"""Time Inception feature extraction (random weights: the cost does not depend on the values).

  python bench/eval_features.py --num 1000 --batch 50 --size 32 [--json]

Measures compile time apart (one warm-up batch), then `--num` images through the same sharded,
jit-compiled path `jaxdiff eval` uses, and extrapolates linearly to 10k images.
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from jaxdiff.eval import inception as inc  # noqa: E402
from jaxdiff.eval.features import extract_features  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--num", type=int, default=1000)
  p.add_argument("--batch", type=int, default=50)
  p.add_argument("--size", type=int, default=32, help="input resolution before the 299 resize")
  p.add_argument("--json", action="store_true")
  args = p.parse_args()

  model = inc.random_inception(0)
  graphdef, state = nnx.split(model)

  def fn(state, x):
    return nnx.merge(graphdef, state)(inc.preprocess(x))

  images = np.random.default_rng(0).integers(0, 256, (args.num, args.size, args.size, 3), np.uint8)
  t0 = time.perf_counter()
  extract_features(fn, state, images[:args.batch], batch_size=args.batch, progress=False)
  compile_s = time.perf_counter() - t0  # compile + one batch
  t0 = time.perf_counter()
  feats = extract_features(fn, state, images, batch_size=args.batch, progress=True)
  run_s = time.perf_counter() - t0
  assert feats.shape == (args.num, inc.FEATURE_DIM)
  result = {
      "num_images": args.num, "batch": args.batch, "input_size": args.size,
      "devices": jax.device_count(), "platform": jax.devices()[0].platform,
      "cpu_count": os.cpu_count(), "compile_plus_first_batch_s": round(compile_s, 2),
      "extract_s": round(run_s, 2), "img_per_s": round(args.num / run_s, 2),
      "extrapolated_10k_s": round(10000 * run_s / args.num, 1),
  }
  print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
  main()
