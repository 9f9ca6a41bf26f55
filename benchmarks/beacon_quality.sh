#!/usr/bin/env bash
# Issue 5's side-by-side table: the trained plug-in vs its untrained copy vs two training-free
# compressions (StreamingLLM-style window, Knorm), on held-out passkey, multi-document QA and LM
# loss; full and none measured once per example, every row of a task in one run.
#
# Usage: benchmarks/beacon_quality.sh [EXAMPLES] [PLUGIN_DIR] [OUT_DIR] [PREVIOUS_PLUGIN_DIR]
#   EXAMPLES               examples per task (default 8); EXAMPLES_PASSKEY, EXAMPLES_RAG_QA and
#                          EXAMPLES_LM_LOSS override it per task
#   PREVIOUS_PLUGIN_DIR    adds an earlier plug-in to the same run (how much a training stage helped)
#   TASKS="lm-loss rag-qa" picks tasks (default: passkey rag-qa lm-loss)
#   RATIOS="4"             picks ratios (default: 4 8); a subset writes TASK-xR.json, so two
#                          ratios can run on two cores at once and table.md still gathers both
#   MATCH_R=M              training-free rows at ratio M beside ratio R's (defaults MATCH_4=3,
#                          MATCH_8=4.7), added when the plug-in keeps numbers raw
#
# Rows per ratio R (every row prints its own kept slots per token):
#   beacon:R:PLUGIN         the plug-in as shipped (with the raw numbers it keeps, if it keeps any)
#   beacon+none:R:PLUGIN    beacons only: exactly 1/R of the slots
#   beacon+KEEP:R:untrained the untrained copy (base projections) keeping what the plug-in keeps
#   streaming:R, knorm:R    1/R of the slots, the beacons-only budget
#   streaming:M, knorm:M    about the budget of the plug-in with its kept numbers: on this
#                           number-dense text ratio 4 keeps 0.32-0.34 slots per token and ratio 8
#                           0.20-0.21, hence M = 3 and 4.7
#   lm-loss, R=4 only: beacon+none+tail128:8:PLUGIN, each segment's newest 128 tokens raw after
#   ratio-8 beacons (the paper's raw live window): 240 slots of a 1,024-token context, under 256.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${1:-8}
PLUGIN=${2:-beacon_rag/data/plugins/smollm2-135m-instruct}
OUT=${3:-benchmarks/results/beacon-quality}
PREVIOUS=${4:-}
TASKS=${TASKS:-passkey rag-qa lm-loss}
RATIOS=${RATIOS:-4 8}
MATCH_4=${MATCH_4:-3}
MATCH_8=${MATCH_8:-4.7}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
# Why read the config: the untrained copy must keep the same raw tokens, or the comparison would
# credit the plug-in with what the kept numbers carry.
KEEP=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("keep") or "none")' \
  "$PLUGIN/beacon_config.json")
suffix=""
[ "$RATIOS" != "4 8" ] && suffix="-x${RATIOS// /-}"
for task in $TASKS; do
  var="EXAMPLES_$(echo "$task" | tr 'a-z-' 'A-Z_')"
  n=${!var:-$EXAMPLES}
  METHODS=""
  for r in $RATIOS; do
    METHODS+="beacon:$r:$PLUGIN,beacon+none:$r:$PLUGIN,"
    [ -n "$PREVIOUS" ] && METHODS+="beacon:$r:$PREVIOUS,"
    METHODS+="beacon+$KEEP:$r:untrained,streaming:$r,knorm:$r,"
    match="MATCH_$r"
    if [ "$KEEP" != none ] && [ -n "${!match:-}" ]; then
      METHODS+="streaming:${!match},knorm:${!match},"
    fi
    if [ "$task" = lm-loss ] && [ "$r" = 4 ]; then
      METHODS+="beacon+none+tail128:8:$PLUGIN,"
    fi
  done
  "$PY" -m beacon_rag.bench.quality --task "$task" --methods "${METHODS%,}" --examples "$n" \
    --threads 1 --details --json > "$OUT/$task$suffix.json"
done
"$PY" - "$OUT" <<'PY'
import json, pathlib, sys
from beacon_rag.bench.quality import TASKS, matrix_markdown
out = pathlib.Path(sys.argv[1])
# A half still running on the other core has an empty file: gather what is finished, say what is not.
finished = [p for p in sorted(out.glob("*.json")) if p.stat().st_size]
for p in sorted(set(out.glob("*.json")) - set(finished)):
    print(f"{p.name} is empty (still running?): left out of table.md", file=sys.stderr)
reports = sorted((json.loads(p.read_text()) for p in finished), key=lambda r: TASKS.index(r["task"]))
table = matrix_markdown(reports)
(out / "table.md").write_text(table)
print(table)
PY
