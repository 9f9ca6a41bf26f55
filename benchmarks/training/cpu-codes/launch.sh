#!/bin/bash
# The CPU runs of 2026-11-23, fourth session (benchmarks/training/README.md, "access codes").
# Both continue a run of the session before (benchmarks/training/cpu-digits-continued/) with the
# new `codes` task (retrieved documents, a 4-digit access code in each) in the mixture:
#   codes32 from digits2 step 815 (rank 32), codes96 from keys96 step 800 (rank 96),
# on the same mixture, so the pair also compares the two ranks. 1 thread on one core each.
#   launch.sh NAME CORE      NAME in: codes32 codes96
# Then: beacon-rag train --eval-only --seed 2 --low-rank R --eval-examples 8 --eval-ratio 4
#       --eval-context-tokens 1024 --init-plugin PLUGIN
set -euo pipefail
name=$1; core=$2
cd "$(git rev-parse --show-toplevel)"
# multidoc back at its share, codes added, kv and lm trimmed; passkey as in digits
tasks='{"lm": 0.15, "passkey": 0.3, "kv": 0.05, "multidoc": 0.15, "codes": 0.2, "multiturn": 0.15}'
common=(--output-dir "runs/s9/$name" --lr 5e-4 --warmup-steps 5 --window 256 --target-tokens 48
        --distill-weight 0 --raw-loss-weight 1.0 --answer-weight 3.0 --ratios 4,8 --context-tokens 256,512
        --steps 850 --checkpoint-every 200 --keep-checkpoints 100 --eval-every 0 --threads 1 --no-progress
        --time-limit 5100 --tasks "$tasks")
case $name in
  codes32) extra=(--seed 9 --low-rank 32 --init-plugin runs/s8/digits2/step-815/plugin) ;;
  codes96) extra=(--seed 10 --low-rank 96 --init-plugin runs/s8/keys96/step-800/plugin) ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
mkdir -p runs/s9
taskset -c "$core" env OMP_NUM_THREADS=1 .venv/bin/python -m beacon_rag.beacon.train "${common[@]}" "${extra[@]}" \
  > "runs/s9/$name.out" 2>&1
