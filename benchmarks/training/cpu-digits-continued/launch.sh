#!/bin/bash
# The CPU runs of 2026-11-23, third session (benchmarks/training/README.md, "digits continued").
# Both are warm starts from run `digits` of the session before at its step 378
# (benchmarks/training/cpu-recall-digits/), whose plug-in must be in runs/s7/digits/step-378/plugin.
# 1 thread on one core each.
#   launch.sh NAME CORE      NAME in: digits2 keys96
# Then: beacon-rag train --eval-only --seed 2 --low-rank R --eval-examples 8 --eval-ratio 4
#       --eval-context-tokens 1024 --init-plugin PLUGIN
set -euo pipefail
name=$1; core=$2
cd "$(git rev-parse --show-toplevel)"
common=(--output-dir "runs/s8/$name" --lr 5e-4 --warmup-steps 5 --window 256 --target-tokens 48
        --distill-weight 0 --init-plugin runs/s7/digits/step-378/plugin --raw-loss-weight 1.0
        --answer-weight 3.0 --ratios 4,8 --context-tokens 256,512 --steps 850
        --checkpoint-every 200 --keep-checkpoints 100 --eval-every 0 --threads 1 --no-progress --time-limit 5700)
case $name in
  # the digits recipe again, a fresh cosine schedule: same mixture, new seed
  digits2) extra=(--seed 7 --low-rank 32
                  --tasks '{"lm": 0.2, "passkey": 0.3, "kv": 0.15, "fact": 0.05, "multidoc": 0.15, "multiturn": 0.15}') ;;
  # widened to rank 96 (zero-initialised extra rank) with more pass keys: the diagnostics said
  # more rank and more pass-key signal both help digits
  keys96) extra=(--seed 8 --low-rank 96
                 --tasks '{"lm": 0.2, "passkey": 0.4, "kv": 0.1, "multidoc": 0.15, "multiturn": 0.15}') ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
mkdir -p runs/s8
taskset -c "$core" env OMP_NUM_THREADS=1 .venv/bin/python -m beacon_rag.beacon.train "${common[@]}" "${extra[@]}" \
  > "runs/s8/$name.out" 2>&1
