#!/bin/bash
# CPU run of 2026-11-25 (twentieth session), warm-started from `cpu-s18/keep-numbers` step 223
# (shipped), anchored (0.1) towards `cpu-s17/lm40` step 189, numbers kept raw.
# Why: on 24 held-out rag-qa examples the shipped plug-in picks a code at near chance once the
# target document is moved to each of the three places (28 of 72, chance 24), even with every fact
# sentence kept verbatim (23 of 72): the place-to-code binding is what is missing, and earlier runs
# saw at most ~80 codes examples each. This one sees several hundred, in short contexts.
#   codes-focus: codes 0.6 of the mixture (lm 0.2, passkey 0.1, multidoc 0.1 keep the rest alive),
#                contexts of 256-512 tokens, lr 5e-4, seed 41.
#   codes-focus-lr2e4: the same at lr 2e-4 (run as `launch.sh codes-focus-lr2e4 0 1800 400`).
# One thread on one core.
#   launch.sh NAME CORE [SECONDS] [STEPS]     default 4200 s, 900 steps
set -euo pipefail
name=$1; core=$2; seconds=${3:-4200}; steps=${4:-900}
cd "$(git rev-parse --show-toplevel)"
focus_mix='{"lm": 0.2, "passkey": 0.1, "multidoc": 0.1, "codes": 0.6}'
from_kn=benchmarks/training/cpu-s18/keep-numbers/step-223/plugin
anchor=benchmarks/training/cpu-s17/lm40/step-189/plugin
case $name in
  codes-focus) run=(--seed 41 --tasks "$focus_mix" --context-tokens 256,512 --lr 5e-4) ;;
  # the control: the same at the lr of the runs before (2e-4), 400 steps in 30 minutes
  codes-focus-lr2e4) run=(--seed 41 --tasks "$focus_mix" --context-tokens 256,512 --lr 2e-4) ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
mkdir -p runs/s20
taskset -c "$core" env OMP_NUM_THREADS=1 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir "runs/s20/$name" --init-plugin "$from_kn" --anchor-plugin "$anchor" --anchor-weight 0.1 \
  --answer-weight 3.0 --low-rank 32 --keep numbers "${run[@]}" \
  --warmup-steps 10 --window 256 --target-tokens 48 --distill-weight 0 --raw-loss-weight 1.0 \
  --ratios 2,4,8 --steps "$steps" --checkpoint-every 100 \
  --keep-checkpoints 100 --eval-every 0 --threads 1 --no-progress --time-limit "$seconds" \
  > "runs/s20/$name.out" 2>&1
