#!/bin/bash
# The CPU run of 2026-11-23, fifth session (benchmarks/training/README.md, "A longer CPU lineage").
# Why one run on both cores instead of two on one core each: every earlier CPU run saw ~330K
# tokens and moved one task at another's cost; this one puts the session's whole budget into one
# plug-in, warm-started from the shipped one, and its plug-in is committed so that a later session
# can go on from it (the earlier sessions' CPU plug-ins were lost with their machines).
#   launch.sh [SECONDS]      default 6000 s of training, then a checkpoint (run as launch.sh 6300)
# Then: beacon-rag train --eval-only --seed 2 --low-rank 32 --eval-examples 8 --eval-ratio 4
#       --eval-context-tokens 1024 --init-plugin runs/s10/long/step-N/plugin
set -euo pipefail
seconds=${1:-6000}
cd "$(git rev-parse --show-toplevel)"
# The digits mixture (best on passkey and multidoc so far) with a small share of codes, the
# rag-qa-shaped task, so that it is not unlearnt.
tasks='{"lm": 0.2, "passkey": 0.3, "kv": 0.1, "multidoc": 0.15, "codes": 0.1, "multiturn": 0.15}'
mkdir -p runs/s10
taskset -c 0,1 env OMP_NUM_THREADS=2 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir runs/s10/long --seed 11 --low-rank 32 \
  --init-plugin beacon_rag/data/plugins/smollm2-135m-instruct \
  --lr 5e-4 --warmup-steps 10 --window 256 --target-tokens 48 --distill-weight 0 --raw-loss-weight 1.0 \
  --answer-weight 3.0 --ratios 4,8 --context-tokens 256,512 --steps 2000 --checkpoint-every 250 \
  --keep-checkpoints 100 --eval-every 0 --threads 2 --no-progress --time-limit "$seconds" --tasks "$tasks" \
  > runs/s10/long.out 2>&1
