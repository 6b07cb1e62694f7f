"""Issue 12 follow-up: the guidance weights between 1 and 1.3 that bench/edm2_digits.py's grid skipped
(EDM2 digits at post-hoc σ_rel 0.15, its best width; the same scorer, sampler and latents).

  python bench/edm2_fine_weights.py --root /work/runs/rp --out bench/results/edm2_digits_fine_weights.json
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import edm2_digits as B  # noqa: E402


def main(argv=None) -> int:
  import jaxdiff
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--std", type=float, default=0.15)
  p.add_argument("--weights", type=float, nargs="+", default=[1.05, 1.1, 1.2])
  args = p.parse_args(argv)
  score = B.Scorer(1000, 0)
  rows = []
  for s in args.seeds:
    main_model, _ = B.phema_model(os.path.join(args.root, f"edm2-s{s}"), args.std)
    for kind, guide in B.GUIDES.items():
      guided = main_model.with_guide(jaxdiff.load(os.path.join(args.root, guide)))
      for w in args.weights:
        rows.append(dict(kind=kind, seed=s, guide=guide, weight=w, **score(guided, guidance=w)))
        print(rows[-1], flush=True)
  with open(args.out, "w") as f:
    json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
