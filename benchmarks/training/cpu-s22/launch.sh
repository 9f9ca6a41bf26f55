#!/bin/bash
# CPU runs of 2026-11-25 (twenty-second session), warm-started from the shipped plug-in
# (`cpu-s21/codes-long-segs` step 480, run 14, digest d2c790a53dfc), anchored (0.1) towards
# `cpu-s17/lm40` step 189 as runs 13-14 were, numbers kept raw, --segments.
# Why: the held-out dev curve of document codes has been flat since `codes-focus` at rank 32.
# Capacity is the untried lever on this recipe. The two runs differ in one thing only:
#   wide96: the rank-32 deltas widened to rank 96 (the new directions start at zero, so step 0
#           computes exactly what run 14 does)
#   r32:    rank 32 kept: the control, so that a gain of wide96 is not just more steps
# Same seed (44, new to these plug-ins), so the same examples in the same order (wide96-more: 45). Mixture and
# schedule as in cpu-s21: codes 0.5, multidoc 0.2, lm 0.15, passkey 0.1, multiturn 0.05; contexts
# 448-704 tokens; lr 3e-4 on a cosine over 480 steps. One thread on one core.
#   launch.sh NAME CORE [SECONDS] [STEPS]     default 4200 s, 480 steps
set -euo pipefail
name=$1; core=$2; seconds=${3:-4200}; steps=${4:-480}
cd "$(git rev-parse --show-toplevel)"
mix='{"codes": 0.5, "multidoc": 0.2, "lm": 0.15, "passkey": 0.1, "multiturn": 0.05}'
start=benchmarks/training/cpu-s21/codes-long-segs/step-480/plugin
anchor=benchmarks/training/cpu-s17/lm40/step-189/plugin
seed=44
case $name in
  wide96) rank=96 ;;
  r32) rank=32 ;;
  # Started at the end of session 22: wide96 480 (shipped as run 15) continued on new examples,
  # since more steps is what moved ratio 8 in both runs above. Resumes from its last checkpoint.
  wide96-more) rank=96; seed=45; start=benchmarks/training/cpu-s22/wide96/step-480/plugin ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
mkdir -p runs/s22
taskset -c "$core" env OMP_NUM_THREADS=1 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir "runs/s22/$name" --init-plugin "$start" --anchor-plugin "$anchor" --anchor-weight 0.1 \
  --answer-weight 3.0 --low-rank "$rank" --keep numbers --segments \
  --seed "$seed" --tasks "$mix" --context-tokens 448,704 --lr 3e-4 \
  --warmup-steps 10 --window 256 --target-tokens 48 --distill-weight 0 --raw-loss-weight 1.0 \
  --ratios 2,4,8 --steps "$steps" --checkpoint-every 80 \
  --keep-checkpoints 100 --eval-every 0 --threads 1 --no-progress --time-limit "$seconds" \
  > "runs/s22/$name.out" 2>&1
