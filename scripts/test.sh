#!/usr/bin/env bash
# Every test suite: the core, each integration package (run from its own folder: it has its own
# pytest settings), and the example notebooks (executed, not just parsed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$PWD/.venv/bin/python"
"$PY" -m pytest -q tests
(cd integrations/langchain-beacon-rag && "$PY" -m pytest -q tests)
