#!/bin/bash
# Issue 16's one short GPU measurement: DDPM++ at full size (configs/cifar10_ddpmpp.py, 56 M
# parameters), bfloat16 compute, train img/s and model FLOP utilisation at batch 256 and 512, and
# sampling img/s (Heun 18 steps, 35 NFE), printed as JSON lines and one summary table. Prepared so
# that the device minutes go to measuring: every setting is here, nothing is installed.
#
#   bash bench/gpu.sh                 # on the GPU machine, from the repository root
#   TINY=1 bash bench/gpu.sh          # the same script on tiny settings (how it is tried on a CPU)
#
# PEAK_TFLOPS: the chip's dense bf16 peak for the utilisation (default 989, an H100/H200 SXM).
# REF_CMD: optional, a command that prints the PyTorch reference's {"train_img_per_s": ..,
# "sample_img_per_s": ..} as one JSON line for the same config and batch ($BATCH in its
# environment); the reference code is not part of this repository, so without REF_CMD that row is
# left out and the summary says so.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-${TMPDIR:-/tmp}/jaxdiff_gpu}"
mkdir -p "$OUT"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
CFG=configs/cifar10_ddpmpp.py
if [ "${TINY:-0}" = 1 ]; then
  SIZE=(--config.model.model_channels=16 --config.model.channel_mult="(1,)"
        --config.model.num_blocks=1 --config.model.attn_resolutions="()"
        --config.data.resolution=8 --config.sampler.num_steps=2)
  BATCHES=(4 8); STEPS=2
else
  SIZE=(); BATCHES=(256 512); STEPS=20
fi
COMMON=(--config.model.dtype=bfloat16 --config.model.augment_dim=0 --config.data.augment_p=0)
python -c "import jax; print('devices:', jax.devices())"
python -m jaxdiff info --config "$CFG" --json "${SIZE[@]}" "${COMMON[@]}" > "$OUT/info.json"
for B in "${BATCHES[@]}"; do
  python -m jaxdiff bench --config "$CFG" --json --batch "$B" --steps "$STEPS" \
    "${SIZE[@]}" "${COMMON[@]}" > "$OUT/bench_$B.json"
  if [ -n "${REF_CMD:-}" ]; then
    BATCH="$B" bash -c "$REF_CMD" | tail -1 > "$OUT/ref_$B.json"
  fi
done
python - "$OUT" "$PEAK_TFLOPS" <<'EOF'
import glob, json, os, sys
out, peak = sys.argv[1], float(sys.argv[2]) * 1e12
info = json.load(open(os.path.join(out, "info.json")))
gflops = info["gflops_per_forward"]
print(f"params {info.get('params', info.get('denoiser_params'))}, forward {gflops:.4g} GFLOP/image, peak {peak / 1e12:g} TFLOP/s")
print("| batch | train img/s | MFU (3 x forward FLOPs) | sample img/s | compile s | reference train / sample img/s |")
print("|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(out, "bench_*.json")),
                   key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0])):
  b = json.loads(open(path).read().strip().splitlines()[-1])
  ref_path = path.replace("bench_", "ref_")
  ref = json.load(open(ref_path)) if os.path.exists(ref_path) else None
  mfu = b["train_img_per_s"] * 3 * gflops * 1e9 / peak
  ref_cell = (f"{ref['train_img_per_s']:.1f} / {ref['sample_img_per_s']:.2f}" if ref
              else "not run (no REF_CMD)")
  print(f"| {b['batch']} | {b['train_img_per_s']:.1f} | {100 * mfu:.1f}% | "
        f"{b['sample_img_per_s']:.2f} | {b['compile_s']:.1f} | {ref_cell} |")
EOF
