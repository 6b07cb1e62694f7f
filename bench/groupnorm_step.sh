#!/bin/bash
# Whole DDPM++ step before (d2d8c73, autodiff GroupNorm) and after (HEAD, custom_vjp), one script.
# Usage: OLD=<worktree at d2d8c73> NEW=<this tree> bash bench/groupnorm_step.sh
set -e
ARGS="bench --config configs/cifar10_ddpmpp.py --json --batch 32 --steps 10 --config.model.model_channels=32 --config.model.augment_dim=0 --config.data.augment_p=0"
uptime
export JAXDIFF_COMPILATION_CACHE=0
(cd "$OLD" && PYTHONPATH="$OLD" python -m jaxdiff $ARGS 2>/dev/null | tail -1) > "${OUT:-/tmp}/gn_before.json"
cat "${OUT:-/tmp}/gn_before.json"
(cd "$NEW" && PYTHONPATH="$NEW" python -m jaxdiff $ARGS 2>/dev/null | tail -1) > "${OUT:-/tmp}/gn_after.json"
cat "${OUT:-/tmp}/gn_after.json"
uptime
