#!/bin/bash
# The --answer-weight check of 2026-11-23 (benchmarks/training/README.md): warm start from the shipped
# plug-in, rank 32, seed 2, only --answer-weight differs; 1,140 s of training, then --eval-only.
#   run_and_eval.sh NAME CORE ANSWER_WEIGHT [OUTPUT_ROOT]   (ran as: aw-1 0 1.0 and aw-0 1 0, at the same time)
name=$1; core=$2; aw=$3
cd "$(git rev-parse --show-toplevel)" || exit 1
root=${4:-runs/answer-weight}; mkdir -p "$root"
taskset -c $core env OMP_NUM_THREADS=1 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir "$root"/$name --seed 2 --steps 200 --lr 3e-4 --warmup-steps 5 \
  --window 256 --ratios 2,4,8 --low-rank 32 --context-tokens 512,1024 --target-tokens 48 \
  --raw-loss-weight 1.0 --distill-weight 0 --answer-weight $aw \
  --init-plugin beacon_rag/data/plugins/smollm2-135m-instruct \
  --checkpoint-every 1000 --keep-checkpoints 1 --eval-every 0 \
  --threads 1 --time-limit 1140 --no-progress > "$root"/$name.out 2>&1
P=$(ls -d "$root"/$name/step-* | sort -V | tail -1)/plugin
taskset -c $core env OMP_NUM_THREADS=1 .venv/bin/beacon-rag train --eval-only --output-dir "$root/eval-tmp-$name" --seed 2 --low-rank 32 \
    --eval-examples 4 --eval-context-tokens 1024 --eval-ratio 4 --threads 1 --init-plugin $P > "$root/$name-r4".json 2> "$root/$name-r4".err
