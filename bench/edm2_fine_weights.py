"""Issue 12 follow-up: the guidance weights between 1 and 1.3 that bench/edm2_digits.py's grid skipped
(EDM2 digits at post-hoc σ_rel 0.15, its best width; same scorer, sampler and latents).
  python bench/edm2_fine_weights.py   # writes /work/runs/fine_w.json; copy to bench/results/
"""
import json, os, sys
sys.path.insert(0, "/work/main/bench"); sys.path.insert(0, "/work/main")
import edm2_digits as B
import jaxdiff
score = B.Scorer(1000, 0)
rows = []
for s in (0, 1, 2):
  main, _ = B.phema_model(f"/work/runs/rp/edm2-s{s}", 0.15)
  for kind, g in B.GUIDES.items():
    guided = main.with_guide(jaxdiff.load(f"/work/runs/rp/{g}"))
    for w in (1.05, 1.1, 1.2):
      rows.append(dict(kind=kind, seed=s, guide=g, weight=w, **score(guided, guidance=w))); print(rows[-1], flush=True)
json.dump(rows, open("/work/runs/fine_w.json", "w"), indent=1)
