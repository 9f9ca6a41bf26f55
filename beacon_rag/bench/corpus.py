"""Real English text that exists offline: the standard library's own documentation.

Benchmarks and beacon training need real prose of chosen lengths, and nothing can be downloaded,
so we take docstrings of the running Python: module docstrings and their public classes' and
functions' docstrings, plus the interactive help topics (``pydoc_data``), in a fixed order
(reproducible for a given Python version).

Train / held-out split: every source (a module's documentation, a help topic) belongs to exactly
one split, decided by a sha256 of its name (never Python's ``hash()``), so training never sees
held-out text and every process agrees on the split.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from functools import lru_cache
from typing import Literal

from beacon_rag.models import LoadedModel

Split = Literal["train", "heldout"]
HELDOUT_SHARE = 5  # one source in five is held out

STDLIB_MODULES = (
    "json", "argparse", "collections", "functools", "itertools", "pathlib", "re", "string",
    "textwrap", "unittest", "logging", "threading", "asyncio", "email", "http.client", "csv",
    "sqlite3", "decimal", "fractions", "statistics", "random", "datetime", "calendar", "heapq",
    "bisect", "shutil", "tempfile", "zipfile", "tarfile", "gzip", "hashlib", "hmac", "secrets",
    "socket", "ssl", "subprocess", "typing", "dataclasses", "enum", "contextlib", "abc", "io",
    "os", "sys", "pickle", "copy", "pprint", "difflib", "doctest", "inspect",
)
MORE_MODULES = (
    "ast", "base64", "binascii", "bz2", "cmd", "codecs", "colorsys", "concurrent.futures", "configparser",
    "contextvars", "copyreg", "ctypes", "dis", "email.message", "filecmp", "fileinput", "fnmatch", "ftplib",
    "getopt", "getpass", "gettext", "glob", "graphlib", "html", "html.parser", "http.cookies", "http.server",
    "imaplib", "importlib", "ipaddress", "keyword", "linecache", "locale", "lzma", "mailbox", "math",
    "mimetypes", "mmap", "multiprocessing", "netrc", "numbers", "operator", "optparse", "pdb", "pkgutil",
    "platform", "plistlib", "poplib", "profile", "pstats", "queue", "quopri", "reprlib", "runpy", "sched",
    "selectors", "shelve", "shlex", "signal", "site", "smtplib", "socketserver", "stat", "struct",
    "symtable", "sysconfig", "tabnanny", "telnetlib", "timeit", "token", "tokenize", "trace", "traceback",
    "tracemalloc", "types", "unicodedata", "urllib.parse", "urllib.request", "uuid", "venv", "warnings",
    "wave", "weakref", "webbrowser", "wsgiref", "xml.dom", "xml.etree.ElementTree", "xmlrpc.client",
    "zipapp", "zipimport", "zoneinfo",
)


def split_of(name: str) -> Split:
    """Which split a source belongs to: a stable function of its name."""
    return "heldout" if int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % HELDOUT_SHARE == 0 else "train"


def _module_text(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - not only ImportError: some modules fail in other ways at import
        return ""  # a module missing from this Python build, or failing at import, is simply not a source
    parts = [inspect.getdoc(module) or ""]
    for attr in sorted(vars(module)):
        obj = getattr(module, attr, None)
        if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        doc = inspect.getdoc(obj)
        if doc and len(doc) > 200:
            parts.append(doc)
    return "\n\n".join(p for p in parts if p)


@lru_cache(maxsize=1)
def sources() -> tuple[tuple[str, str], ...]:
    """Every (name, text) source: module documentation, then help topics."""
    out: list[tuple[str, str]] = []
    for name in dict.fromkeys(STDLIB_MODULES + MORE_MODULES):
        text = _module_text(name)
        if len(text) > 500:
            out.append((f"module:{name}", text))
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - some distributions strip pydoc_data
        topics = {}
    for name in sorted(topics):
        if len(topics[name]) > 500:
            out.append((f"topic:{name}", topics[name]))
    return tuple(out)


def split_sources(split: Split) -> list[tuple[str, str]]:
    return [(name, text) for name, text in sources() if split_of(name) == split]


@lru_cache(maxsize=1)
def package_sources() -> tuple[tuple[str, str], ...]:
    """The long descriptions (READMEs) of the installed distributions, as ``package:NAME``, by name.

    Extra training text only: a GPU run reads the standard library's ~180K training tokens fifty
    times over in a lease, and the beacons then fit that text rather than text in general. What is
    installed differs between machines, so these sources never enter the held-out split, whose
    figures must compare across machines and sessions; beacon-rag's own packages are left out.
    """
    from importlib.metadata import distributions

    by_name: dict[str, str] = {}
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name or name in by_name or name.startswith("beacon-rag"):
            continue
        by_name[name] = dist.metadata.get_payload() or dist.metadata["Description"] or ""
    return tuple((f"package:{name}", by_name[name]) for name in sorted(by_name) if len(by_name[name]) > 500)


@lru_cache(maxsize=1)
def stdlib_text() -> str:
    """The benchmark corpus: documentation of ``STDLIB_MODULES`` (modules first, then members).

    Kept as it was when the TTFT figures were first measured, so reruns use the same text.
    """
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
