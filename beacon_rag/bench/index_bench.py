"""``beacon-rag bench index``: build, query, save and reload a ``DocumentIndex`` of N documents.

The documents are ~60-word chunks of the offline corpus (``corpus.sources()``: standard-library
documentation), repeated with a numbered variation when the corpus has fewer chunks than asked,
so every run on the same Python sees the same N distinct texts. Queries are the first words of
documents spread over the corpus, so every query has a known, answerable neighbourhood.

Figures:
* ``embed_s`` / ``embed_docs_per_s``: embedding every document (the dominant cost);
* ``add_s``: adding the ready vectors to FAISS (without embedding);
* ``query_ms_p50`` / ``_p95``: FAISS search of one ready query vector, k=4;
* ``query_with_embed_ms_p50``: embedding the query text plus the search (what a user waits for);
* ``index_bytes``: the saved folder on disk; ``save_s`` / ``load_s`` (load includes verifying
  checksums and the embedder identity, not building the embedder);
* ``same_results_after_reload``: the same ids for every query after a reload, scores within 1e-6;
* ``peak_rss_mb``: the process's peak resident set size (includes the embedding model).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from beacon_rag.bench.corpus import sources

logger = logging.getLogger(__name__)

WORDS_PER_CHUNK = 60


def make_chunks(count: int, words: int = WORDS_PER_CHUNK) -> list[str]:
    """``count`` distinct ~``words``-word paragraphs from the offline corpus (deterministic)."""
    base: list[str] = []
    for _name, text in sources():
        tokens = re.sub(r"\s+", " ", text).strip().split(" ")
        for start in range(0, len(tokens) - words // 2, words):
            base.append(" ".join(tokens[start : start + words]))
    if not base:
        raise RuntimeError("the offline corpus is empty on this Python build")
    base = list(dict.fromkeys(base))  # identical chunks would be de-duplicated by the index
    chunks = list(base)
    round_ = 1
    while len(chunks) < count:
        # Variation: a numbered prefix, so the text (and its content hash) differs per round.
        chunks.extend(f"(Part {round_}) {chunk}" for chunk in base[: count - len(chunks)])
        round_ += 1
    return chunks[:count]


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def run(args: argparse.Namespace) -> dict[str, Any]:
    from beacon_rag.index import DocumentIndex, SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(args.embedder, batch_size=args.batch_size)
    texts = make_chunks(args.documents)
    index = DocumentIndex(embedder)

    started = time.perf_counter()
    vectors = embedder.embed(texts, progress=True)
    embed_s = time.perf_counter() - started

    # Add the ready vectors through the public path but without re-embedding.
    class _Ready:
        name, dimension = embedder.name, embedder.dimension
        identity = embedder.identity

        def embed(self, batch: Any, *, progress: bool = False) -> np.ndarray:
            return vectors

    index.embedder = _Ready()  # type: ignore[assignment]
    started = time.perf_counter()
    ids = index.add(texts, [{"title": f"chunk {i}"} for i in range(len(texts))], progress=False)
    add_s = time.perf_counter() - started
    index.embedder = embedder

    step = max(len(texts) // args.queries, 1)
    query_texts = [" ".join(texts[i].split(" ")[:12]) for i in range(0, len(texts), step)][: args.queries]
    query_vectors = embedder.embed(query_texts)
    search_ms = []
    for row in tqdm(range(len(query_vectors)), desc="search", unit="query", disable=not args.progress):
        t = time.perf_counter()
        index.search_vectors(query_vectors[row : row + 1], k=args.k)
        search_ms.append((time.perf_counter() - t) * 1000)
    with_embed_ms, before = [], []
    for query in tqdm(query_texts, desc="embed+search", unit="query", disable=not args.progress):
        t = time.perf_counter()
        before.append(index.search(query, k=args.k))
        with_embed_ms.append((time.perf_counter() - t) * 1000)

    with tempfile.TemporaryDirectory(prefix="beacon-rag-index-bench-") as scratch:
        folder = Path(scratch) / "index"
        t = time.perf_counter()
        index.save(folder)
        save_s = time.perf_counter() - t
        index_bytes = _folder_bytes(folder)
        t = time.perf_counter()
        reloaded = DocumentIndex.load(folder, embedder=embedder)
        load_s = time.perf_counter() - t
        after = [reloaded.search(q, k=args.k) for q in query_texts]

    same = all(
        [h.id for h in a] == [h.id for h in b] and all(abs(x.score - y.score) <= 1e-6 for x, y in zip(a, b))
        for a, b in zip(before, after)
    )
    self_hits = sum(1 for q, hits in zip(range(0, len(texts), step), before) if hits and hits[0].id == ids[q])
    return {
        "documents": len(index),
        "embedder": embedder.name,
        "dimension": embedder.dimension,
        "words_per_document": WORDS_PER_CHUNK,
        "embed_s": round(embed_s, 3),
        "embed_docs_per_s": round(len(texts) / embed_s, 1),
        "add_s": round(add_s, 4),
        "queries": len(query_texts),
        "k": args.k,
        "query_ms_p50": round(float(np.percentile(search_ms, 50)), 3),
        "query_ms_p95": round(float(np.percentile(search_ms, 95)), 3),
        "query_with_embed_ms_p50": round(float(np.percentile(with_embed_ms, 50)), 3),
        "query_with_embed_ms_p95": round(float(np.percentile(with_embed_ms, 95)), 3),
        "source_doc_first_share": round(self_hits / max(len(query_texts), 1), 3),
        "index_bytes": index_bytes,
        "save_s": round(save_s, 3),
        "load_s": round(load_s, 3),
        "same_results_after_reload": same,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "threads": _threads(),
    }


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--documents", type=int, default=10_000, help="documents (~60-word chunks) to index")
    parser.add_argument("--queries", type=int, default=100, help="queries timed")
    parser.add_argument("--k", type=int, default=4, help="hits per query")
    parser.add_argument("--batch-size", type=int, default=64, help="embedding batch size")
    parser.add_argument("--embedder", default=None,
                        help="local sentence-transformers model folder (default: embedded all-MiniLM-L6-v2)")
    parser.add_argument("--progress", action="store_true", help="progress bars for the query loops too")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beacon_rag.bench.index_bench")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run(args), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
