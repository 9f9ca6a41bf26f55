"""Real English text that exists offline: the standard library's own documentation.

Benchmarks need contexts of a chosen length made of real prose, and nothing can be downloaded,
so we take module docstrings of the running Python (fixed list, fixed order: reproducible for
a given Python version).
"""

from __future__ import annotations

import importlib
import inspect
from functools import lru_cache

from beacon_rag.models import LoadedModel

STDLIB_MODULES = (
    "json", "argparse", "collections", "functools", "itertools", "pathlib", "re", "string",
    "textwrap", "unittest", "logging", "threading", "asyncio", "email", "http.client", "csv",
    "sqlite3", "decimal", "fractions", "statistics", "random", "datetime", "calendar", "heapq",
    "bisect", "shutil", "tempfile", "zipfile", "tarfile", "gzip", "hashlib", "hmac", "secrets",
    "socket", "ssl", "subprocess", "typing", "dataclasses", "enum", "contextlib", "abc", "io",
    "os", "sys", "pickle", "copy", "pprint", "difflib", "doctest", "inspect",
)


@lru_cache(maxsize=1)
def stdlib_text() -> str:
    """Module docstrings, then their public classes' and functions' docstrings."""
    parts: list[str] = []
    members: list[str] = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        doc = inspect.getdoc(module)
        if doc:
            parts.append(doc)
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 200:
                members.append(doc)
    return "\n\n".join(parts + members)


def make_documents(lm: LoadedModel, context_tokens: int, documents: int) -> list[str]:
    """``documents`` consecutive slices of the corpus, about ``context_tokens`` tokens in all."""
    if documents < 1 or context_tokens < documents:
        raise ValueError(f"need 1 <= documents <= context_tokens (got {documents}, {context_tokens})")
    ids = lm.encode(stdlib_text())
    if len(ids) < context_tokens:
        raise ValueError(f"the offline corpus has {len(ids)} tokens, fewer than {context_tokens} requested")
    per = context_tokens // documents
    return [lm.tokenizer.decode(ids[i * per : (i + 1) * per]).strip() for i in range(documents)]
