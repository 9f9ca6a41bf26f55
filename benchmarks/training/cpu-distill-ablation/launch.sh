#!/bin/bash
# usage: launch.sh NAME CORE DISTILL  -- distillation ablation from the untrained copy, equal data (seed 3)
name=$1; core=$2; distill=$3; shift 3
cd /work/main
nohup taskset -c $core env OMP_NUM_THREADS=1 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir /work/runs/s6/$name --seed 3 --steps 300 --lr 1e-3 --warmup-steps 10 \
  --window 256 --ratios 2,4,8 --low-rank 32 --context-tokens 512,1024 --target-tokens 48 \
  --raw-loss-weight 1.0 --distill-weight $distill \
  --checkpoint-every 25 --keep-checkpoints 1 --eval-every 25 --eval-examples 4 --eval-context-tokens 768 \
  --threads 1 --time-limit 4800 --no-progress "$@" > /work/runs/s6/$name.out 2>&1 &
echo $! > /work/runs/s6/$name.pid
