"""Test-session setup: a throwaway KV cache folder (never the user's) and engine clean-up.

``BEACON_RAG_CACHE_DIR`` is set at import time, before any engine exists, because engines read
it when they are built. The converted embedded model under ``BEACON_RAG_HOME`` is deliberately
left alone: converting it again costs ~30 s.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

_CACHE_DIR = tempfile.mkdtemp(prefix="li-beacon-rag-kv-")
os.environ["BEACON_RAG_CACHE_DIR"] = _CACHE_DIR
os.environ.setdefault("HF_HUB_OFFLINE", "1")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)


@pytest.fixture
def make_llm(tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """``BeaconRAG`` over this test's own cache folder: a fresh engine, so the first call is cold.

    Engines are dropped afterwards: each keeps a RAM tier of KV, and a session of tests building
    one per test would otherwise hold them all.
    """
    from beacon_rag import Engine

    from llama_index.llms.beacon_rag import BeaconRAG

    before = Engine.shared_engines()
    counter = iter(range(1000))

    def build(**kwargs: Any) -> Any:
        kwargs.setdefault("cache_dir", str(tmp_path / f"kv{next(counter)}"))
        return BeaconRAG(**kwargs)

    yield build
    for engine in Engine.shared_engines():
        if not any(engine is old for old in before):
            Engine.release_shared(engine)
