#!/bin/bash
# CPU runs of 2026-11-25 (nineteenth session), warm-started from `cpu-s18/keep-numbers` step 223
# (shipped), still anchored (0.1) towards `cpu-s17/lm40` step 189 and trained with numbers kept raw.
# Its one unmet QA target is multi-document QA: every wrong rag-qa answer was another document's
# code, read back exactly, so the numbers survive and their association with a place does not.
#   numbers-more:  the same mixture as keep-numbers, a fresh cosine (the "longer run" lever), seed 38;
#   numbers-assoc: more documents with codes (multidoc 0.3, codes 0.3), shorter contexts (512-1,024
#                  tokens, so about twice the steps in the time, and nearer rag-qa's ~550), seed 39.
#   numbers-segments: the keep mixture, trained in the engine's layout (`--segments`: the beacon
#                  windows restart at every document and conversation turn, as inference caches
#                  them), contexts of 512-1,024 tokens, seed 40.
# One thread on one core each.
#   launch.sh NAME CORE [SECONDS] [STEPS]     default 5100 s, 260 steps
set -euo pipefail
name=$1; core=$2; seconds=${3:-5100}; steps=${4:-260}
cd "$(git rev-parse --show-toplevel)"
keep_mix='{"lm": 0.3, "passkey": 0.15, "kv": 0.05, "multidoc": 0.2, "codes": 0.2, "multiturn": 0.1}'
assoc_mix='{"lm": 0.25, "passkey": 0.05, "kv": 0.05, "multidoc": 0.3, "codes": 0.3, "multiturn": 0.05}'
from_kn=benchmarks/training/cpu-s18/keep-numbers/step-223/plugin
anchor=benchmarks/training/cpu-s17/lm40/step-189/plugin
case $name in
  numbers-more) run=(--seed 38 --tasks "$keep_mix" --context-tokens 1024,2048) ;;
  numbers-assoc) run=(--seed 39 --tasks "$assoc_mix" --context-tokens 512,1024) ;;
  numbers-segments) run=(--seed 40 --tasks "$keep_mix" --context-tokens 512,1024 --segments) ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
mkdir -p runs/s19
taskset -c "$core" env OMP_NUM_THREADS=1 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir "runs/s19/$name" --init-plugin "$from_kn" --anchor-plugin "$anchor" --anchor-weight 0.1 \
  --answer-weight 3.0 --low-rank 32 --keep numbers "${run[@]}" \
  --lr 2e-4 --warmup-steps 10 --window 256 --target-tokens 48 --distill-weight 0 --raw-loss-weight 1.0 \
  --ratios 2,4,8 --steps "$steps" --checkpoint-every 40 \
  --keep-checkpoints 100 --eval-every 0 --threads 1 --no-progress --time-limit "$seconds" \
  > "runs/s19/$name.out" 2>&1
