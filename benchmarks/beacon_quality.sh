#!/usr/bin/env bash
# Issue 5's side-by-side table: the trained plug-in vs the untrained copy vs two training-free
# compressions (StreamingLLM-style window, Knorm) at the same kept-slot budget, ratios 4 and 8,
# on held-out passkey, multi-document QA and LM loss; full and none measured once per example.
# Usage: benchmarks/beacon_quality.sh [EXAMPLES] [PLUGIN_DIR] [OUT_DIR] [PREVIOUS_PLUGIN_DIR]
#   PREVIOUS_PLUGIN_DIR adds an earlier plug-in to the same run (how much a training stage helped);
#   TASKS="lm-loss rag-qa" picks tasks (default: passkey rag-qa lm-loss).
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${1:-8}
PLUGIN=${2:-beacon_rag/data/plugins/smollm2-135m-instruct}
OUT=${3:-benchmarks/results/beacon-quality}
PREVIOUS=${4:-}
TASKS=${TASKS:-passkey rag-qa lm-loss}
mkdir -p "$OUT"
METHODS=""
for r in 4 8; do
  METHODS+="beacon:$r:$PLUGIN,"
  [ -n "$PREVIOUS" ] && METHODS+="beacon:$r:$PREVIOUS,"
  METHODS+="beacon:$r:untrained,streaming:$r,knorm:$r,"
done
METHODS=${METHODS%,}
for task in $TASKS; do
  .venv/bin/python -m beacon_rag.bench.quality --task "$task" --methods "$METHODS" --examples "$EXAMPLES" \
    --threads 1 --json > "$OUT/$task.json"
done
# shellcheck disable=SC2086
.venv/bin/python - "$OUT" $TASKS <<'PY'
import json, pathlib, sys
from beacon_rag.bench.quality import matrix_markdown
out = pathlib.Path(sys.argv[1])
reports = [json.loads((out / f"{t}.json").read_text()) for t in sys.argv[2:]]
(out / "table.md").write_text(matrix_markdown(reports))
print(matrix_markdown(reports))
PY
