#!/bin/bash
# A CPU run of 2026-11-24, seventh session (benchmarks/training/README.md, "Seventh CPU session").
# The only lineage that improved every task's answer loss was shipped -> `digits` 378 -> `digits2`
# 815 (the digits mixture, no codes); its plug-ins were lost with their machine. Every run that put
# `codes` in the mixture lost multi-document answers, and no later run got them back. This run
# starts that lineage again from the shipped plug-in, with both cores and one cosine schedule over
# the whole budget, to see whether it keeps improving everything with twice its tokens.
#   launch.sh [SECONDS]      default 5100 s of training, then a checkpoint
# Then: beacon-rag train --eval-only --seed 2 --low-rank 32 --eval-examples 8 --eval-ratio 4
#       --eval-context-tokens 1024 --init-plugin runs/s12/again/step-N/plugin
set -euo pipefail
seconds=${1:-5100}
cd "$(git rev-parse --show-toplevel)"
tasks='{"lm": 0.2, "passkey": 0.3, "kv": 0.15, "fact": 0.05, "multidoc": 0.15, "multiturn": 0.15}'
mkdir -p runs/s12
taskset -c 0,1 env OMP_NUM_THREADS=2 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir runs/s12/again --seed 14 --low-rank 32 \
  --init-plugin beacon_rag/data/plugins/smollm2-135m-instruct \
  --lr 5e-4 --warmup-steps 10 --window 256 --target-tokens 48 --distill-weight 0 --raw-loss-weight 1.0 \
  --answer-weight 3.0 --ratios 4,8 --context-tokens 256,512 --steps 1700 --checkpoint-every 400 \
  --keep-checkpoints 100 --eval-every 0 --threads 2 --no-progress --time-limit "$seconds" --tasks "$tasks" \
  > runs/s12/again.out 2>&1
