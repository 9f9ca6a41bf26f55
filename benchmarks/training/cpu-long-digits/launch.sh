#!/bin/bash
# The CPU run of 2026-11-24, sixth session (benchmarks/training/README.md, "Sixth CPU session").
# It tests the fifth session's hypothesis: multidoc answers got worse in every run whose mixture
# held `codes` and better in the runs without it. So it goes on from the fifth session's committed
# plug-in (cpu-long/long/step-1659) on the `digits` mixture, which has no codes, with every other
# setting the same as that run; if multidoc comes back while passkey holds, codes was the cause.
#   launch.sh [SECONDS]      default 5400 s of training, then a checkpoint
# Then: beacon-rag train --eval-only --seed 2 --low-rank 32 --eval-examples 8 --eval-ratio 4
#       --eval-context-tokens 1024 --init-plugin runs/s11/digits/step-N/plugin
set -euo pipefail
seconds=${1:-5400}
cd "$(git rev-parse --show-toplevel)"
tasks='{"lm": 0.2, "passkey": 0.3, "kv": 0.15, "fact": 0.05, "multidoc": 0.15, "multiturn": 0.15}'
mkdir -p runs/s11
taskset -c 0,1 env OMP_NUM_THREADS=2 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir runs/s11/digits --seed 12 --low-rank 32 \
  --init-plugin benchmarks/training/cpu-long/long/step-1659/plugin \
  --lr 5e-4 --warmup-steps 10 --window 256 --target-tokens 48 --distill-weight 0 --raw-loss-weight 1.0 \
  --answer-weight 3.0 --ratios 4,8 --context-tokens 256,512 --steps 2000 --checkpoint-every 250 \
  --keep-checkpoints 100 --eval-every 0 --threads 2 --no-progress --time-limit "$seconds" --tasks "$tasks" \
  > runs/s11/digits.out 2>&1
