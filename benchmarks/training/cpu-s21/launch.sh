#!/bin/bash
# CPU runs of 2026-11-25 (twenty-first session), warm-started from `cpu-s20/codes-focus` step 900
# (shipped, digest 393d4d6644ce), anchored (0.1) towards `cpu-s17/lm40` step 189, numbers kept raw.
# Why: codes-focus taught the place-to-code binding in contexts of 256-512 tokens; the bench's
# rag-qa prompts are ~550 tokens and it still stands at 75% / 70% of full at ratios 4 / 8 (90% /
# 75% asked). These two runs see contexts of the bench's length, at a lower lr, and differ in one
# thing only:
#   codes-long:      every context compressed as one segment (as every run before)
#   codes-long-segs: --segments, the beacon windows restart at each document and turn, as the
#                    engine (and so the bench) caches them
# Same seed (43), so the same examples in the same order. Mixture: codes 0.5, multidoc 0.2, lm 0.15,
# passkey 0.1, multiturn 0.05; contexts 448-704 tokens; lr 3e-4 on a cosine over 480 steps.
# One thread on one core.
#   launch.sh NAME CORE [SECONDS] [STEPS]     default 4200 s, 480 steps
set -euo pipefail
name=$1; core=$2; seconds=${3:-4200}; steps=${4:-480}
cd "$(git rev-parse --show-toplevel)"
mix='{"codes": 0.5, "multidoc": 0.2, "lm": 0.15, "passkey": 0.1, "multiturn": 0.05}'
from_cf=benchmarks/training/cpu-s20/codes-focus/step-900/plugin
anchor=benchmarks/training/cpu-s17/lm40/step-189/plugin
case $name in
  codes-long) layout=() ;;
  codes-long-segs) layout=(--segments) ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
mkdir -p runs/s21
taskset -c "$core" env OMP_NUM_THREADS=1 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir "runs/s21/$name" --init-plugin "$from_cf" --anchor-plugin "$anchor" --anchor-weight 0.1 \
  --answer-weight 3.0 --low-rank 32 --keep numbers "${layout[@]}" \
  --seed 43 --tasks "$mix" --context-tokens 448,704 --lr 3e-4 \
  --warmup-steps 10 --window 256 --target-tokens 48 --distill-weight 0 --raw-loss-weight 1.0 \
  --ratios 2,4,8 --steps "$steps" --checkpoint-every 80 \
  --keep-checkpoints 100 --eval-every 0 --threads 1 --no-progress --time-limit "$seconds" \
  > "runs/s21/$name.out" 2>&1
