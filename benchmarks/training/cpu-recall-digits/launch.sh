#!/bin/bash
# The CPU runs of 2026-11-23 (second session; benchmarks/training/README.md, "recall and digits").
# Every run is a warm start from the shipped plug-in, rank 32 unless said, 1 thread on one core.
#   launch.sh NAME CORE      NAME in: base recall diag-r32 diag-full digits
# Then: beacon-rag train --eval-only --seed 2 --low-rank R --eval-examples 8 --eval-ratio 4
#       --eval-context-tokens 1024 (base, recall, digits) or 256 (diag-*, digits) --init-plugin PLUGIN
set -euo pipefail
name=$1; core=$2
cd "$(git rev-parse --show-toplevel)"
common=(--output-dir "runs/s7/$name" --lr 3e-4 --warmup-steps 5 --window 256 --target-tokens 48
        --distill-weight 0 --init-plugin beacon_rag/data/plugins/smollm2-135m-instruct
        --checkpoint-every 50 --keep-checkpoints 100 --eval-every 0 --threads 1 --no-progress)
case $name in
  # the usual mixture with the answer's tokens weighted (as cpu-answer-weight/, longer)
  base) extra=(--seed 4 --steps 1000 --ratios 2,4,8 --low-rank 32 --context-tokens 512,1024 --raw-loss-weight 1.0
               --answer-weight 1.0 --time-limit 6000) ;;
  # the same with 30% recall (quote the compressed context after a cue)
  recall) extra=(--seed 4 --steps 1000 --ratios 2,4,8 --low-rank 32 --context-tokens 512,1024 --raw-loss-weight 1.0
                 --answer-weight 1.0 --time-limit 5500
                 --tasks '{"lm": 0.2, "passkey": 0.12, "kv": 0.1, "fact": 0.08, "multidoc": 0.1, "multiturn": 0.1, "recall": 0.3}') ;;
  # diagnostics: pass keys only, one 256-token window, ratio 4, no raw-token loss; rank 32 vs full rank
  diag-r32|diag-full) extra=(--seed 5 --steps 300 --lr 1e-3 --ratios 4 --context-tokens 256,256 --raw-loss-weight 0
                             --answer-weight 1.0 --tasks '{"passkey": 1.0}' --checkpoint-every 1000 --time-limit 660 --keep-checkpoints 1
                             --low-rank "$([[ $name == diag-full ]] && echo 0 || echo 32)") ;;
  # digit-heavy mixture, short contexts, ratios 4 and 8, the answer's tokens weighted 3x, raw-token loss kept
  digits) extra=(--seed 6 --steps 600 --lr 5e-4 --ratios 4,8 --low-rank 32 --context-tokens 256,512 --raw-loss-weight 1.0
                 --answer-weight 3.0 --checkpoint-every 1000 --time-limit 1500 --keep-checkpoints 1
                 --tasks '{"lm": 0.2, "passkey": 0.3, "kv": 0.15, "fact": 0.05, "multidoc": 0.15, "multiturn": 0.15}') ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
mkdir -p runs/s7
taskset -c "$core" env OMP_NUM_THREADS=1 .venv/bin/python -m beacon_rag.beacon.train "${common[@]}" "${extra[@]}" \
  > "runs/s7/$name.out" 2>&1
