#!/bin/bash
# The README's main job timed as a new user meets it (run on an idle machine): train the digits
# default with an empty compilation cache, sample 1,000, score them; then the sample again with
# its compiled program cached. Usage: bash bench/readme_time.sh
set -e
cd "$(dirname "$0")/.."
D="${TMPDIR:-/tmp}/readme_time"
rm -rf "$D" && mkdir -p "$D"
export JAXDIFF_COMPILATION_CACHE="$D/xla"
uptime
/usr/bin/time -f "train wall %e s, user %U s, sys %S s, maxrss %M KB" \
  python -m jaxdiff train --config configs/digits.py --workdir "$D/digits" > "$D/train.out" 2> "$D/train.err"
tail -2 "$D/train.err"
/usr/bin/time -f "sample wall %e s" \
  python -m jaxdiff sample --workdir "$D/digits" --num 1000 --out "$D/s.npz" 2>&1 | tail -2
python bench/digits_quality.py "$D/s.npz" --json | tail -1
/usr/bin/time -f "sample (cached compile) wall %e s" \
  python -m jaxdiff sample --workdir "$D/digits" --num 1000 --out "$D/s2.npz" 2>&1 | tail -1
python -m jaxdiff eval --samples "$D/s.npz" --metric fdd,accuracy --json 2>/dev/null | tail -1
uptime
