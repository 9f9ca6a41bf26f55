#!/usr/bin/env bash
# Every test suite: the core, each integration package (run from its own folder: it has its own
# pytest settings); the example notebooks are executed (not just parsed) by the core suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$PWD/.venv/bin/python"
"$PY" -m pytest -q tests
(cd integrations/langchain-beacon-rag && "$PY" -m pytest -q tests)
(cd integrations/llama-index-llms-beacon-rag && "$PY" -m pytest -q tests)
