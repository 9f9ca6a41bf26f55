#!/bin/bash
# The distillation ablation of 2026-11-23 (benchmarks/training/README.md): one run per call, from the
# untrained copy, equal data (seed 3); only --distill-weight differs between the two runs.
#   launch.sh NAME CORE DISTILL_WEIGHT [OUTPUT_ROOT]     e.g. launch.sh distill-0.5 0 0.5
# Ran as `launch.sh distill-0.5 0 0.5` and `launch.sh distill-0 1 0` at the same time, 1 thread each.
name=$1; core=$2; distill=$3; root=${4:-runs/distill-ablation}
cd "$(git rev-parse --show-toplevel)" && mkdir -p "$root" || exit 1
nohup taskset -c "$core" env OMP_NUM_THREADS=1 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir "$root/$name" --seed 3 --steps 300 --lr 1e-3 --warmup-steps 10 \
  --window 256 --ratios 2,4,8 --low-rank 32 --context-tokens 512,1024 --target-tokens 48 \
  --raw-loss-weight 1.0 --distill-weight "$distill" \
  --checkpoint-every 25 --keep-checkpoints 1 --eval-every 25 --eval-examples 4 --eval-context-tokens 768 \
  --threads 1 --time-limit 4800 --no-progress > "$root/$name.out" 2>&1 &
