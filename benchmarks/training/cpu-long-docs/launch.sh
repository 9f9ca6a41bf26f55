#!/bin/bash
# A short CPU run of 2026-11-24, sixth session (benchmarks/training/README.md, "Sixth CPU session").
# `digits` 1796 carries pass keys to the full context's loss but lost the document tasks (multidoc,
# codes). This run asks whether they come back when the mixture leans on them instead, and how
# much of the pass key that costs: the same settings, a document-heavy mixture, a shorter cosine.
#   launch.sh [SECONDS]      default 3000 s of training, then a checkpoint
# Then: beacon-rag train --eval-only --seed 2 --low-rank 32 --eval-examples 8 --eval-ratio 4
#       --eval-context-tokens 1024 --eval-tasks passkey,multidoc,codes --init-plugin runs/s11/docs/step-N/plugin
set -euo pipefail
seconds=${1:-3000}
cd "$(git rev-parse --show-toplevel)"
tasks='{"lm": 0.2, "passkey": 0.15, "multidoc": 0.3, "codes": 0.2, "multiturn": 0.15}'
mkdir -p runs/s11
taskset -c 0,1 env OMP_NUM_THREADS=2 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir runs/s11/docs --seed 13 --low-rank 32 \
  --init-plugin benchmarks/training/cpu-long-digits/digits/step-1796/plugin \
  --lr 5e-4 --warmup-steps 10 --window 256 --target-tokens 48 --distill-weight 0 --raw-loss-weight 1.0 \
  --answer-weight 3.0 --ratios 4,8 --context-tokens 256,512 --steps 800 --checkpoint-every 200 \
  --keep-checkpoints 100 --eval-every 0 --threads 2 --no-progress --time-limit "$seconds" --tasks "$tasks" \
  > runs/s11/docs.out 2>&1
