#!/bin/bash
# Issue 16's comparison in one script: the PyTorch reference, then `jaxdiff bench`, then the
# reference again (its two runs averaged, so that a drift of the machine during the script shows as
# a spread rather than as a ratio), on DDPM++ at model_channels 32, batch 32, 32x32, float32,
# Heun 18 steps (35 NFE), augmentation off on both sides.
#
#   REF_CMD='...' bash bench/vs_reference.sh [extra jaxdiff --config.KEY=VALUE ...]
#
# REF_CMD: a command printing the reference's {"train_img_per_s": .., "sample_img_per_s": ..} as
# its last line, for batch $BATCH and model_channels $CHANNELS (both in its environment). The
# reference code (NVlabs/edm) is not part of this repository; docs/bench.md says how its side was
# built. JAXDIFF_COMPILATION_CACHE is honoured as in every jaxdiff command (set it to 0 for the
# uncached compile seconds). Needs an idle machine: the load average is printed before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${REF_CMD:?set REF_CMD to the command that times the reference (see the header)}"
OUT="${OUT:-${TMPDIR:-/tmp}/jaxdiff_vs_reference}"
mkdir -p "$OUT"
export BATCH="${BATCH:-32}" CHANNELS="${CHANNELS:-32}"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
bash -c "$REF_CMD" | tail -1 > "$OUT/ref_1.json"
cat "$OUT/ref_1.json"
python -m jaxdiff bench --config configs/cifar10_ddpmpp.py --json --batch "$BATCH" --steps 10 \
  --config.model.model_channels="$CHANNELS" --config.model.augment_dim=0 \
  --config.data.augment_p=0 "$@" 2>/dev/null | tail -1 > "$OUT/jaxdiff.json"
cat "$OUT/jaxdiff.json"
bash -c "$REF_CMD" | tail -1 > "$OUT/ref_2.json"
cat "$OUT/ref_2.json"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
refs = [json.load(open(os.path.join(out, f"ref_{i}.json"))) for i in (1, 2)]
ours = json.load(open(os.path.join(out, "jaxdiff.json")))
print("| | train img/s | sample img/s | compile s |")
print("|---|---|---|---|")
for i, r in enumerate(refs, 1):
  print(f"| reference, run {i} | {r['train_img_per_s']:.2f} | {r['sample_img_per_s']:.3f} | |")
mean = {k: sum(r[k] for r in refs) / 2 for k in ("train_img_per_s", "sample_img_per_s")}
print(f"| reference, mean | {mean['train_img_per_s']:.2f} | {mean['sample_img_per_s']:.3f} | |")
print(f"| jaxdiff | {ours['train_img_per_s']:.2f} | {ours['sample_img_per_s']:.3f} | "
      f"{ours['compile_s']:.1f} |")
print(f"| ratio (jaxdiff / reference mean) | {ours['train_img_per_s'] / mean['train_img_per_s']:.2f}x"
      f" | {ours['sample_img_per_s'] / mean['sample_img_per_s']:.2f}x | |")
EOF
