#!/bin/bash
# CPU runs of 2026-11-24 (seventeenth session).
# First pair, from `cpu-after-gpu/stdlib` step 128: stdlib 128 led the plug-in shipped then on pass keys
# (answer loss 0.76 against 1.26 at ratio 4), codes and multiturn, but trailed it on the held-out LM gap
# (0.24 against 0.27) and on multidoc at ratio 2. Both put lm at 40% and multidoc at 25% of the mixture;
# they differ in the anchor towards stdlib 128:
#   lm40:      anchor 0.1 (so that the pass-key gains stay), seed 31;
#   lm40-free: no anchor, seed 32 (does the anchor hold the LM gap back as well?).
# Second pair, from `lm40` step 189 (shipped), anchored (0.1) towards it: its wrong pass keys are mostly
# the right digits in the wrong order, so both go back to the digit-heavy `codes` mixture and differ in
# the weight on the answer's own tokens:
#   order-aw3: answer weight 3 (as every run since the seventh session), seed 33;
#   order-aw6: answer weight 6, seed 34.
# A cosine over 200 steps, contexts of 1,024-2,048 tokens, ratios 2/4/8, one thread on one core.
#   launch.sh NAME CORE [SECONDS]     default 3600 s
set -euo pipefail
name=$1; core=$2; seconds=${3:-3600}
cd "$(git rev-parse --show-toplevel)"
lm40_mix='{"lm": 0.4, "passkey": 0.1, "kv": 0.05, "multidoc": 0.25, "codes": 0.1, "multiturn": 0.1}'
codes_mix='{"lm": 0.1, "passkey": 0.3, "kv": 0.05, "multidoc": 0.15, "codes": 0.3, "multiturn": 0.1}'
from_stdlib=benchmarks/training/cpu-after-gpu/stdlib/step-128/plugin
from_lm40=benchmarks/training/cpu-s17/lm40/step-189/plugin
case $name in
  lm40) run=(--init-plugin "$from_stdlib" --anchor-weight 0.1 --seed 31 --answer-weight 3.0 --tasks "$lm40_mix") ;;
  lm40-free) run=(--init-plugin "$from_stdlib" --seed 32 --answer-weight 3.0 --tasks "$lm40_mix") ;;
  order-aw3) run=(--init-plugin "$from_lm40" --anchor-weight 0.1 --seed 33 --answer-weight 3.0 --tasks "$codes_mix") ;;
  order-aw6) run=(--init-plugin "$from_lm40" --anchor-weight 0.1 --seed 34 --answer-weight 6.0 --tasks "$codes_mix") ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
mkdir -p runs/s17
taskset -c "$core" env OMP_NUM_THREADS=1 .venv/bin/python -m beacon_rag.beacon.train \
  --output-dir "runs/s17/$name" --low-rank 32 "${run[@]}" \
  --lr 2e-4 --warmup-steps 10 --window 256 --target-tokens 48 --distill-weight 0 --raw-loss-weight 1.0 \
  --ratios 2,4,8 --context-tokens 1024,2048 --steps 200 --checkpoint-every 40 \
  --keep-checkpoints 100 --eval-every 0 --threads 1 --no-progress --time-limit "$seconds" \
  > "runs/s17/$name.out" 2>&1
