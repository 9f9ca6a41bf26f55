"""Test-session setup: a throwaway KV cache folder, never the user's.

Set at import time (before any engine exists) because engines read ``BEACON_RAG_CACHE_DIR``
when they are built, and they are shared for the whole process. The converted embedded model
under ``BEACON_RAG_HOME`` is deliberately left alone: converting it again costs ~30 s.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_CACHE_DIR = tempfile.mkdtemp(prefix="lc-beacon-rag-kv-")
os.environ["BEACON_RAG_CACHE_DIR"] = _CACHE_DIR
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)


def session_cache_dir() -> str:
    return _CACHE_DIR
