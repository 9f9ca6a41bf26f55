"""``beacon-rag bench throughput``: a stream of RAG queries over a fixed corpus, as a server sees it.

Why a stream: a cache's worth depends on how often documents come back. Real retrieval traffic is
skewed (a few documents are retrieved again and again), so each query takes ``--docs-per-query``
distinct documents drawn Zipf(``--zipf-s``) over the corpus, and a question drawn from a few
templates. Every configuration answers the same stream, one query after another, starting from an
empty cache (compulsory misses included), greedy, ``--answer-tokens`` new tokens:

* ``plain``: plain transformers, the whole prompt prefilled each time, then greedy decoding (the
  baseline every ratio is taken against);
* ``exact`` (chained placement: a document is reused when everything before it is the same, so the
  documents of a query are laid out in corpus order, which makes equal sets equal prompts);
* ``exact-independent`` / ``beacon-r{R}-independent``: documents reused in any combination
  (approximate: see the README's placement measurements and the quality bench).

Configurations are interleaved query by query (see ``serve``), so a drifting machine load hits
them all alike. Reported per configuration: queries per second (one stream, one query at a time:
queries over the time spent answering them),
time to first token p50/p95, document hit rate (documents read from RAM or disk over documents
asked) and token hit rate (context tokens read from cache over context tokens).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from beacon_rag.bench.corpus import make_documents
from beacon_rag.bench.report import machine_info, results_dir, save_result, timed_section
from beacon_rag.bench.scaling import build_engine, first_token_after, prompt_parts
from beacon_rag.engine import rag_messages
from beacon_rag.generation import now
from beacon_rag.models import LoadedModel, load_model

logger = logging.getLogger(__name__)

QUESTIONS = (
    "Which Python modules do these documents describe, and what is each one for?",
    "Summarize what these documents say about errors and exceptions.",
    "Which functions in these documents take a timeout argument?",
    "What does each document recommend for file handling?",
    "List the classes these documents mention.",
)
DEFAULT_CONFIGS = ("plain", "exact", "exact-independent", "beacon-r8-independent")


def zipf_stream(corpus: int, queries: int, per_query: int, s: float, seed: int) -> list[tuple[list[int], int]]:
    """``queries`` (documents in corpus order, question index) with document ranks drawn Zipf(s)."""
    if not 1 <= per_query <= corpus:
        raise ValueError(f"need 1 <= docs per query <= corpus documents (got {per_query}, {corpus})")
    if s <= 0:
        raise ValueError(f"the Zipf exponent must be positive, got {s}")
    rng = random.Random(f"throughput|{seed}")  # a string seed: reproducible across processes
    weights = [1.0 / (rank + 1) ** s for rank in range(corpus)]
    stream = []
    for _ in range(queries):
        chosen: set[int] = set()
        while len(chosen) < per_query:
            chosen.add(rng.choices(range(corpus), weights)[0])
        stream.append((sorted(chosen), rng.randrange(len(QUESTIONS))))
    return stream


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without needing numpy here."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def plain_answer(lm: LoadedModel, ids: list[int], answer_tokens: int) -> tuple[float, float, list[int]]:
    """Plain transformers: prefill everything, greedy decode; (ttft, total, tokens)."""
    started = now()
    token, cache = first_token_after(lm, ids)
    ttft = now() - started
    tokens = [token]
    eos = lm.tokenizer.eos_token_id
    while len(tokens) < answer_tokens and tokens[-1] != eos:
        token, cache = first_token_after(lm, [token], cache)
        tokens.append(token)
    return ttft, now() - started, tokens


def _one_query(lm: LoadedModel, engine: Any, messages: Any, answer_tokens: int) -> dict[str, float]:
    """One query through one configuration: ttft, total, and what the cache gave."""
    if engine is None:
        prefix, tail = prompt_parts(lm, messages)
        ttft, total, _ = plain_answer(lm, prefix + tail, answer_tokens)
        # plain transformers recomputes every context token: no hits
        return {"ttft": ttft, "total": total, "asked": 0, "hits": 0, "read": 0, "created": len(prefix)}
    result = engine.generate(messages, max_new_tokens=answer_tokens)
    documents = [u for u in result.segments if u.kind == "document"]
    return {"ttft": result.ttft_s, "total": result.total_s, "asked": len(documents),
            "hits": sum(1 for u in documents if u.source != "computed"),
            "read": result.usage.cache_read_tokens, "created": result.usage.cache_creation_tokens}


def serve(lm: LoadedModel, configs: list[str], prompts: list[Any], answer_tokens: int,
          scratch: Path) -> list[dict[str, Any]]:
    """Answer the stream with every configuration, interleaved query by query.

    Interleaving (query 1 by every configuration, then query 2, ...) keeps the comparison fair on
    a shared machine whose load drifts over minutes: every configuration sees the same load
    profile, which running them one after the other would not give. Each keeps its own cache.
    """
    engines = {c: None if c == "plain" else build_engine(
        lm, c.removesuffix("-independent"), scratch / c,
        placement="independent" if c.endswith("-independent") else "chained") for c in configs}
    records: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    for messages in prompts:
        for config in configs:
            records[config].append(_one_query(lm, engines[config], messages, answer_tokens))
    for engine in engines.values():
        if engine is not None:
            engine.close()
    rows = []
    for config in configs:
        recs = records[config]
        ttfts = [r["ttft"] for r in recs]
        totals = [r["total"] for r in recs]
        asked, read, created = sum(r["asked"] for r in recs), sum(r["read"] for r in recs), sum(
            r["created"] for r in recs)
        rows.append({
            "config": config,
            "queries": len(recs),
            "busy_s": sum(totals),
            "qps": len(recs) / sum(totals),
            "ttft_p50_s": percentile(ttfts, 50),
            "ttft_p95_s": percentile(ttfts, 95),
            "ttft_mean_s": statistics.fmean(ttfts),
            "latency_p50_s": percentile(totals, 50),
            "document_hit_rate": sum(r["hits"] for r in recs) / asked if asked else 0.0,
            "token_hit_rate": read / (read + created) if read + created else 0.0,
            "ttft_s": ttfts,
        })
    return rows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    small = args.small
    corpus = args.corpus_docs or (6 if small else 32)
    per_doc = args.tokens_per_doc or (64 if small else 256)
    per_query = args.docs_per_query or (2 if small else 3)
    queries = args.queries or (6 if small else 40)
    answer_tokens = args.answer_tokens or (4 if small else 8)
    configs = list(args.configs or DEFAULT_CONFIGS)
    with timed_section() as clock:
        lm = load_model(args.model)
        first_token_after(lm, lm.encode("warm up the kernels once"))
        documents = make_documents(lm, corpus * per_doc, corpus)
        stream = zipf_stream(corpus, queries, per_query, args.zipf_s, args.seed)
        prompts = [rag_messages(QUESTIONS[q], [documents[i] for i in docs]) for docs, q in stream]
        with tempfile.TemporaryDirectory(prefix="beacon-rag-throughput-") as tmp:
            rows = serve(lm, configs, prompts, answer_tokens, Path(tmp))
    distinct = len({tuple(d) for d, _ in stream})
    return {
        "bench": "throughput",
        "setting": "small" if small else "full",
        "model": lm.name,
        "corpus_documents": corpus,
        "tokens_per_document": per_doc,
        "docs_per_query": per_query,
        "queries": queries,
        "distinct_document_sets": distinct,
        "zipf_s": args.zipf_s,
        "seed": args.seed,
        "answer_tokens": answer_tokens,
        "configs": rows,
        "duration_s": clock.seconds,
        "machine": machine_info(),
        "threads": torch.get_num_threads(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure and write the JSON (what ``beacon-rag bench throughput`` calls)."""
    for config in args.configs or ():
        name = config.removesuffix("-independent")
        if config != "plain" and name != "exact" and not (name.startswith("beacon-r") and name[8:].isdigit()):
            raise SystemExit(f"error: unknown configuration {config!r}; use plain, exact or beacon-r<ratio>, "
                             "optionally with -independent")
    result = measure(args)
    if not args.no_save:
        save_result(result, Path(args.output) if args.output else results_dir() / "throughput.json")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", action="store_true", help="CI setting: 6 queries over 6 short documents")
    parser.add_argument("--corpus-docs", type=int, default=None, help="documents in the corpus (default 32)")
    parser.add_argument("--tokens-per-doc", type=int, default=None, help="tokens per document (default 256)")
    parser.add_argument("--docs-per-query", type=int, default=None, help="documents per query (default 3)")
    parser.add_argument("--queries", type=int, default=None, help="queries in the stream (default 40)")
    parser.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of document popularity")
    parser.add_argument("--answer-tokens", type=int, default=None, help="new tokens per answer (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", nargs="+", default=None,
                        help=f"configurations (default {' '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: embedded SmolLM2)")
    parser.add_argument("--output", default=None, help="JSON file (default: benchmarks/results/throughput.json)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--json", action="store_true", help="print one JSON line")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beacon_rag.bench.throughput", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    print(json.dumps(run(args), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
