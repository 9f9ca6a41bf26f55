"""``beacon-rag``: ask, ingest, cache, demo, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from beacon_rag.compressors import compressor_options, parse_ratio
from beacon_rag.compressors.beacon import KEEP_CHOICES
from beacon_rag.documents import Document, DocumentError, read_documents, sample_documents_dir

logger = logging.getLogger("beacon_rag.cli")

DEMO_QUESTION = "Who built the lighthouse on Kestrel Point, and when was it completed?"
DEMO_FOLLOW_UP = "How tall is the lighthouse?"


def _engine_options(parser: argparse.ArgumentParser, placement: str = "chained") -> None:
    parser.add_argument("--model", default=None, help="model folder or .gguf file (default: embedded SmolLM2)")
    parser.add_argument("--compressor", default="exact", help="exact | beacon | streaming | knorm")
    parser.add_argument("--ratio", type=parse_ratio, default=None,
                        help="compression ratio (beacon): 2, 4, 8, 16, 32, 0 (raw) or adapt")
    parser.add_argument("--window", type=int, default=None, help="beacon window in raw tokens (beacon only)")
    parser.add_argument("--keep", choices=KEEP_CHOICES, default=None,
                        help="beacon only: also keep these tokens raw among the beacons (digits; numbers: "
                        "digits and the token ending each number) or none; default: what the plug-in was "
                        "trained with")
    parser.add_argument("--tail", type=int, default=None,
                        help="beacon only: keep each segment's newest N tokens raw after the beacons of the "
                        "older ones (the paper's live window; N more slots); default 0")
    parser.add_argument("--placement", default=placement, choices=["chained", "independent"],
                        help=f"chained: exact, documents reused as a prefix; independent: documents reused in "
                        f"any order, approximate (see README) (default: {placement})")
    parser.add_argument("--repair-tokens", type=int, default=0,
                        help="re-encode this many first tokens of each later document (independent placement)")
    parser.add_argument("--cache-dir", default=None, help="disk tier folder (default: $BEACON_RAG_CACHE_DIR or "
                        "~/.cache/beacon-rag/kv)")
    parser.add_argument("--redis-url", default=None,
                        help="shared Redis tier below RAM and disk (default: $BEACON_RAG_REDIS_URL; '' disables)")


def build_engine(args: argparse.Namespace, **overrides: Any) -> Any:
    from beacon_rag.engine import Engine

    options = compressor_options(args.ratio, args.window, args.keep, args.tail)
    kwargs: dict[str, Any] = {"compressor": args.compressor, "compressor_options": options,
                              "placement": args.placement, "repair_tokens": args.repair_tokens,
                              "cache_dir": args.cache_dir, "redis_url": getattr(args, "redis_url", None)}
    kwargs.update(overrides)
    try:
        return Engine(args.model, **kwargs)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err


def _ask_messages(documents: Sequence[Document], question: str) -> Any:
    from beacon_rag.engine import rag_messages

    return rag_messages(question, [d.text for d in documents], titles=[d.title for d in documents])


def cmd_ask(args: argparse.Namespace) -> int:
    if not args.question.strip():
        raise SystemExit("error: --question is empty")
    documents = _read(args.docs)
    engine = build_engine(args)
    result = _generate(engine, _ask_messages(documents, args.question), args.max_tokens)
    if args.json:
        out = result.as_dict()
        print(json.dumps({k: out[k] for k in ("answer", "usage", "ttft_s", "total_s", "finish_reason", "model_name")}))
    else:
        print(result.text)
        u = result.usage
        print(f"\n[{u.input_tokens} input tokens: {u.cache_read_tokens} from cache, {u.cache_creation_tokens} "
              f"cached now; time to first token {result.ttft_s:.3f} s]", file=sys.stderr)
    return 0


def _generate(engine: Any, messages: Any, max_tokens: int) -> Any:
    from beacon_rag.engine import ContextTooLongError

    try:
        return engine.generate(messages, max_new_tokens=max_tokens)
    except (ContextTooLongError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err


def _read(paths: Sequence[str]) -> list[Document]:
    try:
        return read_documents(paths)
    except (DocumentError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err


def cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from beacon_rag.engine import rag_messages

    if args.placement != "independent":
        raise SystemExit("error: ingest precomputes documents one by one, which only independent placement can reuse")
    documents = _read(args.paths)
    engine = build_engine(args)
    counts = {"computed": 0, "memory": 0, "disk": 0, "redis": 0}
    tokens = 0
    failures = 0
    for document in tqdm(documents, desc="ingest", unit="doc"):
        try:
            uses = engine.warm(rag_messages("", [document.text], titles=[document.title]))
        except ValueError as err:  # one bad document must not lose the others
            failures += 1
            logger.error("skipped %s: %s", document.path, err)
            continue
        for use in uses:
            if use.kind == "document":
                counts[use.source] += 1
                tokens += use.raw_tokens
    print(json.dumps({"documents": len(documents), "failed": failures, "tokens": tokens,
                      "compressed": counts["computed"], "already_cached": counts["memory"] + counts["disk"] + counts["redis"],
                      "cache_dir": str(engine.cache_dir)}))
    return 1 if failures else 0


def cmd_cache(args: argparse.Namespace) -> int:
    from beacon_rag.engine import default_cache_dir
    from beacon_rag.store import DiskTier

    directory = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    disk = DiskTier(directory)
    try:
        if args.action == "clear":
            before = disk.stats()
            disk.clear()
            print(json.dumps({"cleared_entries": before["entries"], "cache_dir": str(directory)}))
        else:
            print(json.dumps(disk.stats(), default=str))
    finally:
        disk.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A real RAG round trip on the bundled documents: cold, warm RAM, warm disk (new engine)."""
    from beacon_rag.engine import Engine

    documents = read_documents([sample_documents_dir()])
    print(f"beacon-rag demo: {len(documents)} documents from {sample_documents_dir()}")
    with tempfile.TemporaryDirectory(prefix="beacon-rag-demo-") as scratch:
        cache_dir = args.cache_dir or scratch
        engine = build_engine(args, cache_dir=cache_dir)
        print(f"model: {engine.lm.name} ({engine.lm.family}), compressor: {engine.compressor.name}, "
              f"placement: {engine.placement}, loaded in {engine.lm.load_seconds:.1f} s\n")
        rows = []
        for label, current, question in [
            ("cold (empty cache)", engine, DEMO_QUESTION),
            ("warm (RAM)", engine, DEMO_QUESTION),
            ("warm (disk, new engine)", None, DEMO_QUESTION),
            ("new question, same docs", engine, DEMO_FOLLOW_UP),
        ]:
            if current is None:
                engine.close()
                current = engine = Engine(engine.lm, compressor=engine.compressor, placement=engine.placement,
                                          repair_tokens=engine.repair_tokens, cache_dir=cache_dir)
            result = _generate(current, _ask_messages(documents, question), args.max_tokens)
            rows.append((label, result))
            u = result.usage
            print(f"== {label}\nQ: {question}\nA: {result.text}\n   time to first token {result.ttft_s:.3f} s; "
                  f"{u.input_tokens} input tokens, {u.cache_read_tokens} read from cache, "
                  f"{u.cache_creation_tokens} compressed now\n")
        cold, warm, disk = rows[0][1], rows[1][1], rows[2][1]
        print(f"speedup of time to first token: warm RAM {cold.ttft_s / warm.ttft_s:.1f}x, "
              f"warm disk {cold.ttft_s / disk.ttft_s:.1f}x; same answer cold/warm: "
              f"{cold.text == warm.text == disk.text}")
        engine.close()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bench != "redis" and os.environ.pop("BEACON_RAG_REDIS_URL", None):
        # The benches measure this machine's tiers; a deployment's shared Redis would turn their
        # cold runs into remote hits. `bench redis` starts a server of its own.
        logger.warning("ignoring BEACON_RAG_REDIS_URL for bench %s: it measures the local tiers", args.bench)
    result = args.bench_module.run(args)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beacon-rag", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a question over documents, reusing cached KV")
    ask.add_argument("--docs", nargs="+", required=True, help="files or folders of .txt/.md documents")
    ask.add_argument("--question", required=True)
    ask.add_argument("--max-tokens", type=int, default=128)
    ask.add_argument("--json", action="store_true", help="print answer, usage and ttft_s as JSON")
    _engine_options(ask)
    ask.set_defaults(func=cmd_ask)

    ingest = sub.add_parser("ingest", help="precompute document caches for files or folders")
    ingest.add_argument("paths", nargs="+")
    _engine_options(ingest, placement="independent")
    ingest.set_defaults(func=cmd_ingest)

    cache = sub.add_parser("cache", help="disk cache statistics or removal")
    cache.add_argument("action", choices=["stats", "clear"])
    cache.add_argument("--cache-dir", default=None)
    cache.set_defaults(func=cmd_cache)

    demo = sub.add_parser("demo", help="end-to-end RAG on bundled documents: cold, then warm")
    demo.add_argument("--max-tokens", type=int, default=48)
    _engine_options(demo)
    demo.set_defaults(func=cmd_demo)

    from beacon_rag.beacon import train

    train_parser = sub.add_parser("train", help="train a beacon plug-in (checkpoints, resume, progress bar)")
    train.add_arguments(train_parser)
    train_parser.set_defaults(func=lambda args: train.run(args))

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    from beacon_rag.bench import (
        index_bench,
        memory_bench,
        peers,
        placement,
        quality,
        redis_bench,
        report,
        scaling,
        soak,
        throughput,
        train_speed,
        ttft,
    )

    for name, module, summary in [
        ("peers", peers, "quality at matched kept-slot budgets: beacon vs kvpress presses vs LLMLingua"),
        ("redis", redis_bench, "shared Redis tier: time to first token from Redis vs local disk vs prefill, bytes"),
        ("ttft", ttft, "time to first token: full prefill vs cold vs warm"),
        ("placement", placement, "multi-document QA: independent placement (and repair) vs full prefill"),
        ("quality", quality, "answer quality of a compressor vs full context and no context"),
        ("index", index_bench, "FAISS document index: embed, add, search, save/load"),
        ("scaling", scaling, "time to first token vs context length and documents, every method, as curves"),
        ("memory", memory_bench, "KV bytes per token, peak RSS, disk bytes per document, documents per 1 GB"),
        ("throughput", throughput, "queries per second on a Zipf stream of RAG queries, hit rate, TTFT p50/p95"),
        ("report", report, "plots and the README results section from benchmarks/results/*.json"),
        ("soak", soak, "RAM and disk tiers under a long random workload: budgets, LRU, integrity"),
        ("train-speed", train_speed, "beacon training tokens/s by batch size (per-launch overhead with --narrow)"),
    ]:
        bench_parser = bench_sub.add_parser(name, help=summary)
        module.add_arguments(bench_parser)
        bench_parser.set_defaults(func=cmd_bench, bench_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "compressor", None) == "exact" and (
        getattr(args, "ratio", None) is not None or getattr(args, "window", None) is not None
        or getattr(args, "keep", None) is not None or getattr(args, "tail", None) is not None
    ):
        raise SystemExit("error: --ratio, --window, --keep and --tail apply to compressing methods; "
                         "exact keeps every token")
    if (getattr(args, "tail", None) or 0) < 0:
        raise SystemExit(f"error: --tail must be a whole number of tokens >= 0, got {args.tail}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_transformers()
    return int(args.func(args) or 0)


def _quiet_transformers() -> None:
    """transformers prints load-progress bars and advisory warnings that drown the answer."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


if __name__ == "__main__":
    sys.exit(main())
