#!/usr/bin/env bash
# Issue 5's side-by-side table: the trained plug-in vs the untrained copy vs two training-free
# compressions (StreamingLLM-style window, Knorm) at the same kept-slot budget, ratios 4 and 8,
# on held-out passkey, multi-document QA and LM loss; full and none measured once per example.
# Usage: benchmarks/beacon_quality.sh [EXAMPLES] [PLUGIN_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${1:-8}
PLUGIN=${2:-beacon_rag/data/plugins/smollm2-135m-instruct}
OUT=${3:-benchmarks/results/beacon-quality}
mkdir -p "$OUT"
METHODS="beacon:4:$PLUGIN,beacon:4:untrained,streaming:4,knorm:4,beacon:8:$PLUGIN,beacon:8:untrained,streaming:8,knorm:8"
for task in passkey rag-qa lm-loss; do
  .venv/bin/python -m beacon_rag.bench.quality --task "$task" --methods "$METHODS" --examples "$EXAMPLES" \
    --threads 1 --json > "$OUT/$task.json"
done
.venv/bin/python - "$OUT" <<'PY'
import json, pathlib, sys
from beacon_rag.bench.quality import matrix_markdown
out = pathlib.Path(sys.argv[1])
reports = [json.loads((out / f"{t}.json").read_text()) for t in ("passkey", "rag-qa", "lm-loss")]
(out / "table.md").write_text(matrix_markdown(reports))
print(matrix_markdown(reports))
PY
