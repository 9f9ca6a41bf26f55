"""A FAISS index whose entries know the cache keys of their documents' compressed KV.

Retrieval returns documents; the engine caches documents by content. Recording, per entry, the
sha256 of its text and the engine's segment key(s) for it (``precompute``) ties the two together:
a retrieved document is a known cache hit, with no re-tokenising guesswork.

On disk (a folder), nothing is pickled (DESIGN.md invariant 4):
* ``index.faiss``: FAISS's own binary format (``faiss.write_index`` / ``faiss.read_index``);
* ``entries.jsonl``: one JSON object per entry (text, metadata, content hash, cache keys);
* ``index.json``: format version, embedder name / dimension / identity digest, and the sha256 of
  the two other files, so a damaged file is reported by name instead of failing somewhere deeper.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from beacon_rag.index.embedders import Embedder, SentenceTransformerEmbedder, normalize

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
FAISS_FILE = "index.faiss"
ENTRIES_FILE = "entries.jsonl"
MANIFEST_FILE = "index.json"
# The system prompt ``rag_messages`` (and so ``Engine.ask``) uses unless told otherwise; read from
# its signature so the two can never drift apart.
_DEFAULT_SYSTEM: str | None = None


class IndexLoadError(ValueError):
    """A saved index cannot be used; the message names the file and the reason."""


class EmbedderMismatchError(IndexLoadError):
    """The embedder given to ``load`` does not produce vectors comparable with the stored ones."""


def content_hash(text: str) -> str:
    """sha256 (hex) of the UTF-8 text: the entry's identity, independent of ids and metadata."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _default_system() -> str | None:
    global _DEFAULT_SYSTEM
    if _DEFAULT_SYSTEM is None:
        from beacon_rag.engine import rag_messages

        _DEFAULT_SYSTEM = inspect.signature(rag_messages).parameters["system"].default
    return _DEFAULT_SYSTEM


@dataclass
class IndexEntry:
    """One stored document. ``faiss_id`` is its int64 id inside FAISS (stable across save/load)."""

    faiss_id: int
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    cache_keys: list[str] = field(default_factory=list)
    cache_profile: str | None = None  # digest of the engine setup the cache keys belong to

    def to_json(self) -> dict[str, Any]:
        return {
            "faiss_id": self.faiss_id,
            "id": self.id,
            "text": self.text,
            "metadata": self.metadata,
            "content_hash": self.content_hash,
            "cache_keys": self.cache_keys,
            "cache_profile": self.cache_profile,
        }

    @classmethod
    def from_json(cls, raw: Any, where: str) -> IndexEntry:
        if not isinstance(raw, dict):
            raise IndexLoadError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        try:
            entry = cls(
                faiss_id=int(raw["faiss_id"]),
                id=str(raw["id"]),
                text=str(raw["text"]),
                metadata=dict(raw.get("metadata") or {}),
                content_hash=str(raw["content_hash"]),
                cache_keys=[str(k) for k in raw.get("cache_keys") or []],
                cache_profile=raw.get("cache_profile"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise IndexLoadError(f"{where}: malformed entry ({err!r})") from err
        if content_hash(entry.text) != entry.content_hash:
            raise IndexLoadError(f"{where}: content_hash does not match the entry's text (entry {entry.id!r})")
        return entry


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` is the cosine similarity (inner product of unit vectors)."""

    text: str
    score: float
    metadata: dict[str, Any]
    content_hash: str
    cache_keys: list[str]
    id: str
    faiss_id: int

    @property
    def title(self) -> str | None:
        """The title used by ``precompute``; pass it to ``rag_messages(titles=...)`` to hit the cache."""
        title = self.metadata.get("title")
        return None if title is None else str(title)


class DocumentIndex:
    """Exact cosine search (``IndexFlatIP`` on unit vectors, in an ``IndexIDMap2``) over documents.

    Flat, not IVF/HNSW: exact, needs no training, and is fast enough for the tens of thousands of
    documents a local RAG setup holds (see ``beacon-rag bench index``). ``IndexIDMap2`` gives each
    entry a stable int64 id that survives deletions and save/load.

    Identical texts are stored once (by content hash): adding a text again returns the id it
    already has. Public ids are strings (the caller's, or the content hash by default).
    """

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder: Embedder = embedder if embedder is not None else SentenceTransformerEmbedder()
        self.dimension = int(self.embedder.dimension)
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))
        self._entries: dict[int, IndexEntry] = {}
        self._by_id: dict[str, int] = {}
        self._by_hash: dict[str, int] = {}
        self._next_faiss_id = 0
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._by_id

    def entries(self) -> list[IndexEntry]:
        """Every entry, in insertion order (a copy of the list; the entries themselves are live)."""
        with self._lock:
            return [self._entries[i] for i in sorted(self._entries)]

    def get(self, id_: str) -> IndexEntry:
        with self._lock:
            if id_ not in self._by_id:
                raise KeyError(f"no entry with id {id_!r}")
            return self._entries[self._by_id[id_]]

    def add(
        self,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
        *,
        progress: bool | None = None,
    ) -> list[str]:
        """Embed and store ``texts``; return one id per text (an existing one for a known text).

        Metadata must be JSON-serialisable (it is saved as JSON, never pickled); a bad one is
        refused before anything is embedded, so a failed call changes nothing.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string (wrap it in a list)")
        texts = list(texts)
        metadatas = list(metadatas) if metadatas is not None else [None] * len(texts)
        if len(metadatas) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(metadatas)} metadatas")
        if ids is not None:
            ids = [str(i) for i in ids]
            if len(ids) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
        clean_meta: list[dict[str, Any]] = []
        for position, (text, meta) in enumerate(zip(texts, metadatas)):
            if not isinstance(text, str):
                raise TypeError(f"text {position} is a {type(text).__name__}, not a str")
            if not text.strip():
                raise ValueError(f"text {position} is empty or whitespace only")
            meta = dict(meta or {})
            try:
                clean_meta.append(json.loads(json.dumps(meta, allow_nan=False)))
            except (TypeError, ValueError) as err:
                raise TypeError(f"metadata of text {position} is not JSON-serialisable: {err}") from err

        with self._lock:
            out: list[str] = []
            new: list[IndexEntry] = []
            new_texts: list[str] = []
            batch_hash: dict[str, str] = {}  # content hash -> id, for texts new in this call
            batch_ids: set[str] = set()
            for position, (text, meta) in enumerate(zip(texts, clean_meta)):
                digest = content_hash(text)
                wanted = ids[position] if ids is not None else digest
                existing = self._by_hash.get(digest)
                if existing is not None or digest in batch_hash:
                    known = self._entries[existing].id if existing is not None else batch_hash[digest]
                    if known != wanted and ids is not None:
                        logger.info("text %d is already indexed as %r; id %r not used", position, known, wanted)
                    out.append(known)
                    continue
                if wanted in self._by_id or wanted in batch_ids:
                    raise ValueError(f"id {wanted!r} is already used by a different text")
                entry = IndexEntry(self._next_faiss_id + len(new), wanted, text, meta, digest)
                batch_hash[digest] = wanted
                batch_ids.add(wanted)
                new.append(entry)
                new_texts.append(text)
                out.append(wanted)
            if new:
                show = progress if progress is not None else len(new_texts) > 1000
                vectors = self._check_vectors(self.embedder.embed(new_texts, progress=show), len(new_texts))
                self.index.add_with_ids(vectors, np.array([e.faiss_id for e in new], dtype=np.int64))
                for entry in new:
                    self._entries[entry.faiss_id] = entry
                    self._by_id[entry.id] = entry.faiss_id
                    self._by_hash[entry.content_hash] = entry.faiss_id
                self._next_faiss_id += len(new)
            logger.debug("added %d new of %d texts (%d entries)", len(new), len(texts), len(self))
            return out

    def add_documents(self, documents: Iterable[Any], *, progress: bool | None = None) -> list[str]:
        """Add ``beacon_rag.documents.Document``s (title and path become metadata)."""
        documents = list(documents)
        return self.add(
            [d.text for d in documents],
            [{"title": d.title, "path": d.path} for d in documents],
            progress=progress,
        )

    def delete(self, ids: Iterable[str]) -> int:
        """Remove entries by id; unknown ids are ignored. Returns how many were removed."""
        with self._lock:
            gone = [self._by_id[i] for i in dict.fromkeys(str(i) for i in ids) if i in self._by_id]
            if not gone:
                return 0
            removed = self.index.remove_ids(np.array(gone, dtype=np.int64))
            if removed != len(gone):  # pragma: no cover - the maps and FAISS are kept in step
                raise RuntimeError(f"FAISS removed {removed} vectors, expected {len(gone)}")
            for faiss_id in gone:
                entry = self._entries.pop(faiss_id)
                del self._by_id[entry.id]
                del self._by_hash[entry.content_hash]
            return len(gone)

    # ------------------------------------------------------------------ search
    def search(self, query: str, k: int = 4) -> list[Hit]:
        """The ``k`` entries most similar to ``query``, best first."""
        vector = self._check_vectors(self.embedder.embed([query]), 1)
        return self.search_vectors(vector, k)[0]

    def search_vectors(self, vectors: np.ndarray, k: int = 4) -> list[list[Hit]]:
        """Search with ready query vectors (normalised here); one hit list per row."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        vectors = normalize(np.atleast_2d(vectors))
        if vectors.shape[1] != self.dimension:
            raise ValueError(f"query vectors have {vectors.shape[1]} dimensions, the index {self.dimension}")
        with self._lock:
            if not self._entries:
                return [[] for _ in range(len(vectors))]
            scores, found = self.index.search(vectors, min(k, len(self._entries)))
            out: list[list[Hit]] = []
            for row_scores, row_ids in zip(scores, found):
                hits = []
                for score, faiss_id in zip(row_scores, row_ids):
                    entry = self._entries.get(int(faiss_id))
                    if entry is None:  # -1 padding when fewer than k vectors exist
                        continue
                    hits.append(Hit(entry.text, float(score), dict(entry.metadata), entry.content_hash,
                                    list(entry.cache_keys), entry.id, entry.faiss_id))
                out.append(hits)
            return out

    # ------------------------------------------------------------------ cache keys
    def precompute(
        self,
        engine: Any,
        system: str | None | Any = ...,
        *,
        title_key: str = "title",
        ids: Iterable[str] | None = None,
        progress: bool = True,
    ) -> dict[str, int]:
        """Compress every entry's document into ``engine``'s cache and record its cache keys.

        Each entry is warmed as ``rag_messages("", [text], titles=[title], system=system)``, the
        layout ``Engine.ask`` and ``rag_messages`` use, so a later request with the same system
        prompt and title finds the document's KV. ``system`` defaults to ``rag_messages``'s own.
        With ``placement="independent"`` every retrieved document hits; with ``"chained"`` a
        document's key depends on the documents before it, so only the first document of a
        request matches the recorded key.

        A failing document is logged and counted, never fatal: one bad entry must not cost the
        hours already spent on the others. Returns counts: documents, computed, cached, failed.
        """
        from beacon_rag.engine import rag_messages
        from beacon_rag.segments import canonical_json

        if system is ...:
            system = _default_system()
        profile = hashlib.sha256(
            canonical_json({
                "key": engine.key_context.header(engine.placement, ""),
                "repair_tokens": getattr(engine, "repair_tokens", 0),
                "system": system,
            })
        ).hexdigest()
        with self._lock:
            chosen = self.entries() if ids is None else [self.get(i) for i in ids]
        counts = {"documents": len(chosen), "computed": 0, "cached": 0, "failed": 0}
        for entry in tqdm(chosen, desc="precompute", unit="doc", disable=not progress):
            title = entry.metadata.get(title_key)
            try:
                uses = engine.warm(rag_messages("", [entry.text], titles=[title], system=system))
            except Exception as err:  # noqa: BLE001 - per-document errors are reported, not fatal
                counts["failed"] += 1
                logger.warning("precompute: document %r failed: %s: %s", entry.id, type(err).__name__, err)
                continue
            documents = [u for u in uses if u.kind == "document"]
            with self._lock:
                entry.cache_keys = [u.key for u in documents]
                entry.cache_profile = profile
            if any(u.source == "computed" for u in documents):
                counts["computed"] += 1
            else:
                counts["cached"] += 1
        logger.info("precompute: %s", counts)
        return counts

    # ------------------------------------------------------------------ persistence
    def manifest(self) -> dict[str, Any]:
        return {
            "format": "beacon-rag-document-index",
            "format_version": INDEX_FORMAT_VERSION,
            "embedder": {
                "name": self.embedder.name,
                "dimension": self.dimension,
                "identity": self.embedder.identity,
            },
            "faiss_index": "IndexIDMap2(IndexFlatIP)",
            "metric": "inner_product_on_unit_vectors",
            "count": len(self),
            "next_faiss_id": self._next_faiss_id,
        }

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the three files; each is written to a temporary name and renamed into place, and
        ``index.json`` (with the others' checksums) last, so a crash mid-save is detected on load."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            faiss_tmp = folder / (FAISS_FILE + ".tmp")
            faiss.write_index(self.index, str(faiss_tmp))
            entries_tmp = folder / (ENTRIES_FILE + ".tmp")
            with entries_tmp.open("w", encoding="utf-8") as f:
                for entry in self.entries():
                    f.write(json.dumps(entry.to_json(), ensure_ascii=False, allow_nan=False) + "\n")
            manifest = self.manifest()
            manifest["files"] = {
                FAISS_FILE: {"sha256": _sha256_file(faiss_tmp), "bytes": faiss_tmp.stat().st_size},
                ENTRIES_FILE: {"sha256": _sha256_file(entries_tmp), "bytes": entries_tmp.stat().st_size},
            }
            os.replace(faiss_tmp, folder / FAISS_FILE)
            os.replace(entries_tmp, folder / ENTRIES_FILE)
            manifest_tmp = folder / (MANIFEST_FILE + ".tmp")
            manifest_tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(manifest_tmp, folder / MANIFEST_FILE)
        logger.info("saved %d entries to %s", len(self), folder)
        return folder

    @classmethod
    def read_manifest(cls, folder: str | os.PathLike[str]) -> dict[str, Any]:
        """``index.json`` of a saved index, validated (no model needed to call this)."""
        path = Path(folder) / MANIFEST_FILE
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise IndexLoadError(f"{path} is missing: {Path(folder)} is not a saved DocumentIndex") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise IndexLoadError(f"{path} is damaged or not JSON: {err}") from err
        if not isinstance(manifest, dict) or manifest.get("format") != "beacon-rag-document-index":
            raise IndexLoadError(f"{path} does not describe a beacon-rag document index")
        version = manifest.get("format_version")
        if version != INDEX_FORMAT_VERSION:
            raise IndexLoadError(
                f"{path} has index format version {version!r}; this beacon-rag reads version {INDEX_FORMAT_VERSION}"
            )
        for key in ("embedder", "files", "count", "next_faiss_id"):
            if key not in manifest:
                raise IndexLoadError(f"{path} lacks {key!r}")
        return manifest

    @classmethod
    def load(cls, folder: str | os.PathLike[str], embedder: Embedder | None = None) -> DocumentIndex:
        """Read a saved index; refuse a different embedder and any damaged file, naming it.

        The embedder is checked by dimension, name and identity digest: vectors of another model
        would give meaningless scores without any error, which is worse than refusing.
        """
        folder = Path(folder)
        manifest = cls.read_manifest(folder)
        stored = manifest["embedder"]
        embedder = embedder if embedder is not None else SentenceTransformerEmbedder()
        where = folder / MANIFEST_FILE
        if int(stored.get("dimension", -1)) != int(embedder.dimension):
            raise EmbedderMismatchError(
                f"{where}: the index was built with embedder {stored.get('name')!r} of dimension "
                f"{stored.get('dimension')}, but the given embedder {embedder.name!r} has dimension "
                f"{embedder.dimension}; load it with the embedder it was built with"
            )
        if stored.get("name") != embedder.name:
            raise EmbedderMismatchError(
                f"{where}: the index was built with embedder {stored.get('name')!r}, not {embedder.name!r}; "
                "load it with the embedder it was built with"
            )
        if stored.get("identity") != embedder.identity:
            raise EmbedderMismatchError(
                f"{where}: embedder {embedder.name!r} has different weights or settings (identity "
                f"{str(embedder.identity)[:12]}) than the one the index was built with "
                f"({str(stored.get('identity'))[:12]}); its vectors would not be comparable"
            )

        files = manifest["files"]
        for name in (FAISS_FILE, ENTRIES_FILE):
            path = folder / name
            if not path.is_file():
                raise IndexLoadError(f"{path} is missing")
            expected = (files.get(name) or {}).get("sha256")
            size = path.stat().st_size
            if expected != _sha256_file(path):
                raise IndexLoadError(
                    f"{path} is damaged or truncated ({size} bytes, expected {(files.get(name) or {}).get('bytes')}; "
                    "sha256 does not match index.json); rebuild or restore the index"
                )
        try:
            raw_index = faiss.read_index(str(folder / FAISS_FILE))
        except Exception as err:  # faiss raises RuntimeError with C++ detail
            raise IndexLoadError(f"{folder / FAISS_FILE} is not a readable FAISS index: {err}") from err
        if raw_index.d != embedder.dimension:
            raise IndexLoadError(
                f"{folder / FAISS_FILE} holds {raw_index.d}-dimensional vectors; index.json says {embedder.dimension}"
            )
        index_map = raw_index  # the SWIG wrapper already returns the concrete class (and owns it)
        if not isinstance(index_map, faiss.IndexIDMap2):
            raise IndexLoadError(f"{folder / FAISS_FILE} holds a {type(index_map).__name__}, not an IndexIDMap2")

        self = cls(embedder)
        self.index = index_map
        entries_path = folder / ENTRIES_FILE
        with entries_path.open("r", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where_line = f"{entries_path} line {number}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as err:
                    raise IndexLoadError(f"{where_line} is not JSON: {err}") from err
                entry = IndexEntry.from_json(raw, where_line)
                if entry.faiss_id in self._entries or entry.id in self._by_id:
                    raise IndexLoadError(f"{where_line}: duplicate entry {entry.id!r}")
                self._entries[entry.faiss_id] = entry
                self._by_id[entry.id] = entry.faiss_id
                self._by_hash[entry.content_hash] = entry.faiss_id
        stored_ids = set(faiss.vector_to_array(index_map.id_map).tolist())
        if index_map.ntotal != len(self._entries) or stored_ids != set(self._entries):
            raise IndexLoadError(
                f"{folder}: {FAISS_FILE} has {index_map.ntotal} vectors but {ENTRIES_FILE} has "
                f"{len(self._entries)} entries (or their ids differ); the files do not belong together"
            )
        self._next_faiss_id = max(int(manifest["next_faiss_id"]), max(self._entries, default=-1) + 1)
        logger.info("loaded %d entries from %s", len(self), folder)
        return self

    # ------------------------------------------------------------------ helpers
    def _check_vectors(self, vectors: np.ndarray, rows: int) -> np.ndarray:
        vectors = np.asarray(vectors)
        if vectors.shape != (rows, self.dimension):
            raise ValueError(f"the embedder returned shape {vectors.shape}, expected {(rows, self.dimension)}")
        return normalize(vectors)
