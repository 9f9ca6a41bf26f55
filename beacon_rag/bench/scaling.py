"""``beacon-rag bench scaling``: time to first token as the context grows, for every way to serve it.

Why curves and not one point: a cache pays off by turning a cost that grows with the context into
one that does not. Each point of each curve is measured in this one invocation, on the same prompt,
best of several runs, so the ratios between methods at a point are fair even on a loaded machine.

Methods at every point (context length, number of documents):

* ``full_prefill``: plain transformers, the whole prompt in one forward (what users do today);
* ``prompt_reuse``: plain transformers, the context prefilled once into a ``DynamicCache`` which is
  ``copy.deepcopy``-ed for each query (the transformers documentation's recipe: exact, prefix only,
  in-process only); ``prompt_reuse_s`` is the per-query time, ``prompt_reuse_prefill_s`` the one-off;
* ``exact`` and ``beacon-r{R}`` through the engine: ``cold`` (empty cache: compress + store + answer),
  ``warm_ram`` (same request again, same process) and ``warm_disk`` (a fresh process with an empty RAM
  tier and the disk tier this process filled; all configurations of all points are probed by one such
  process, timed after its model load);
* ``question_only``: the question with no context at all, the floor nothing can beat.

Two curves: context length (fixed document count) and document count (fixed tokens per document, the
usual RAG chunking, so the context grows with top-k).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from beacon_rag.bench.corpus import make_documents
from beacon_rag.bench.report import machine_info, results_dir, save_result, timed_section
from beacon_rag.bench.ttft import QUESTION, plain_prefill_s
from beacon_rag.engine import Engine, as_messages, rag_messages
from beacon_rag.generation import now
from beacon_rag.kv import cache_from_layers
from beacon_rag.models import LoadedModel, load_model
from beacon_rag.segments import build_segments

logger = logging.getLogger(__name__)

BEACON_RATIOS = (2, 4, 8, 16)
# Full setting: up to the model window (8192 positions) minus room for chat glue and the question.
LENGTHS = (512, 1024, 2048, 4096, 7936)
DOC_COUNTS = (1, 2, 4, 8, 16)
SMALL_LENGTHS = (96, 256)
SMALL_DOC_COUNTS = (1, 2)


def _best(runs: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(max(runs, 1)))


def config_names(ratios: tuple[int, ...]) -> list[str]:
    return ["exact", *[f"beacon-r{r}" for r in ratios]]


def build_engine(lm: LoadedModel, config: str, cache_dir: str | Path, memory_bytes: int | None = None,
                 placement: str = "chained", beacon_options: dict[str, Any] | None = None) -> Engine:
    """``exact`` or ``beacon-r{R}`` (the shipped plug-in for the embedded model, its trained window,
    unless ``beacon_options`` names a plug-in folder and window)."""
    kwargs: dict[str, Any] = {"cache_dir": cache_dir, "placement": placement}
    if memory_bytes is not None:
        kwargs["memory_bytes"] = memory_bytes
    if config == "exact":
        return Engine(lm, compressor="exact", **kwargs)
    if config.startswith("beacon-r"):
        options = {**(beacon_options or {}), "ratio": int(config[len("beacon-r"):])}
        return Engine(lm, compressor="beacon", compressor_options=options, **kwargs)
    raise ValueError(f"unknown configuration {config!r}; use 'exact' or 'beacon-r<ratio>'")


def first_token_after(lm: LoadedModel, ids: list[int], cache: Any = None) -> tuple[int, Any]:
    """Greedy first token of ``ids`` continued from ``cache`` (None: from scratch), and the cache."""
    cache = cache if cache is not None else cache_from_layers([], [])  # grown in place by the forward
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([ids], device=lm.device), **lm.cache_kwargs(cache), use_cache=True,
                       logits_to_keep=1)
    return int(torch.argmax(out.logits[0, -1])), cache


def prompt_reuse(lm: LoadedModel, prefix: list[int], tail: list[int], runs: int) -> dict[str, Any]:
    """transformers' own prompt reuse: prefill ``prefix`` once, deep-copy the cache per query."""
    started = now()
    _, cache = first_token_after(lm, prefix)
    prefill = now() - started
    token = -1

    def one() -> float:
        nonlocal token
        begin = now()
        token, _ = first_token_after(lm, tail, copy.deepcopy(cache))
        return now() - begin

    per_query = _best(runs, one)
    return {"prompt_reuse_prefill_s": prefill, "prompt_reuse_s": per_query, "prompt_reuse_token": token}


def pin_plugin(lm: LoadedModel, scratch: Path) -> dict[str, Any]:
    """Copy the shipped beacon plug-in into the run's scratch folder and use that copy throughout.

    A training job may replace the shipped plug-in while a long run is under way; the fresh
    warm-disk process would then load different weights, whose keys miss every cached entry.
    """
    from beacon_rag.compressors.beacon import shipped_plugin

    found = shipped_plugin(lm)
    if found is None:
        return {}
    folder, config = found
    pinned = scratch / "plugin"
    shutil.copytree(folder, pinned)
    options: dict[str, Any] = {"plugin": str(pinned)}
    if isinstance(config.get("window"), int):
        options["window"] = config["window"]
    return options


def measure_point(lm: LoadedModel, context_tokens: int, docs: int, configs: list[str], args: argparse.Namespace,
                  scratch: Path, beacon_options: dict[str, Any] | None = None,
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All methods at one (context, documents) point; returns the row and the warm-disk probe jobs."""
    messages = rag_messages(QUESTION, make_documents(lm, context_tokens, docs))
    prefix, tail_ids = prompt_parts(lm, messages)
    ids = prefix + tail_ids
    question_prefix, question_tail = prompt_parts(lm, rag_messages(QUESTION, []))
    question_ids = question_prefix + question_tail

    full_token, _ = first_token_after(lm, ids)
    row: dict[str, Any] = {
        "requested_context_tokens": context_tokens,
        "documents": docs,
        "context_tokens": len(prefix),  # every cached segment: system prompt, glue and documents
        "tail_tokens": len(tail_ids),
        "prompt_tokens": len(ids),
        "full_prefill_s": _best(args.prefill_runs, lambda: plain_prefill_s(lm, ids)),
        "question_only_s": _best(args.runs, lambda: plain_prefill_s(lm, question_ids)),
    }
    reuse = prompt_reuse(lm, prefix, tail_ids, args.runs)
    row.update({k: v for k, v in reuse.items() if k != "prompt_reuse_token"})
    row["prompt_reuse_same_first_token"] = reuse["prompt_reuse_token"] == full_token
    row["configs"] = {}
    jobs = []
    for config in configs:
        cache_dir = scratch / f"c{context_tokens}-d{docs}-{config}"
        cold_times, engine, cold = [], None, None
        for attempt in range(max(args.cold_runs, 1)):
            if engine is not None:
                engine.close()
            engine = build_engine(lm, config, cache_dir if attempt == 0 else scratch / f"{cache_dir.name}-{attempt}",
                                  beacon_options=beacon_options)
            cold = engine.generate(messages, max_new_tokens=1)
            cold_times.append(cold.ttft_s)
        assert engine is not None and cold is not None
        warm = [engine.generate(messages, max_new_tokens=1) for _ in range(max(args.runs, 1))]
        if any(u.source != "memory" for r in warm for u in r.segments):
            raise RuntimeError(f"{config}: a warm request did not read every segment from RAM")
        engine.close()
        stored = sum(u.nbytes for u in cold.segments)
        row["configs"][config] = {
            "cold_s": min(cold_times),
            "warm_ram_s": min(r.ttft_s for r in warm),
            "slots": sum(u.slots for u in cold.segments),
            "kv_bytes_per_token": stored / max(len(prefix), 1),
            "first_token_matches_full": cold.token_ids[:1] == [full_token] == warm[0].token_ids[:1],
        }
        jobs.append({"context_tokens": context_tokens, "docs": docs, "config": config, "cache_dir": str(cache_dir),
                     "beacon_options": beacon_options or {}})
    return row, jobs


def prompt_parts(lm: LoadedModel, messages: Any) -> tuple[list[int], list[int]]:
    """The cacheable prefix (every segment) and the live tail, exactly as the engine cuts them."""
    segments, tail = build_segments(lm, as_messages(messages))
    return [t for s in segments for t in s.token_ids], list(tail.token_ids)


def warm_disk_probe(jobs: list[dict[str, Any]], runs: int, model: str | None) -> list[float | str]:
    """In a fresh interpreter: every job's request with a RAM tier of size zero (disk reads only)."""
    lm = load_model(model)
    plain_prefill_s(lm, lm.encode("warm up the kernels once"))
    documents: dict[tuple[int, int], Any] = {}
    out = []
    for job in jobs:
        point = (job["context_tokens"], job["docs"])
        if point not in documents:
            documents[point] = rag_messages(QUESTION, make_documents(lm, *point))
        engine = build_engine(lm, job["config"], job["cache_dir"], memory_bytes=0,
                              beacon_options=job.get("beacon_options"))
        times: list[float] = []
        sources: list[str] = []
        for _ in range(max(runs, 1)):
            result = engine.generate(documents[point], max_new_tokens=1)
            sources = [u.source for u in result.segments]
            if set(sources) != {"disk"}:
                break
            times.append(result.ttft_s)
        engine.close()
        # A miss is reported, not raised: one bad job must not throw away an hour of measurements.
        out.append(min(times) if times else f"expected every segment from disk, got {sources}")
    return out


def _run_probe(jobs: list[dict[str, Any]], runs: int, model: str | None, scratch: Path) -> list[float | str]:
    spec = scratch / "probe.json"
    spec.write_text(json.dumps({"jobs": jobs, "runs": runs, "model": model}))
    done = subprocess.run([sys.executable, "-m", "beacon_rag.bench.scaling", "--warm-disk-probe", str(spec)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"warm-disk probe failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every curve, in this process (plus one warm-disk probe process); nothing is written."""
    lengths = tuple(args.lengths or (SMALL_LENGTHS if args.small else LENGTHS))
    doc_counts = tuple(args.doc_counts or (SMALL_DOC_COUNTS if args.small else DOC_COUNTS))
    tokens_per_doc = args.tokens_per_doc or (64 if args.small else 256)
    ratios = tuple(args.ratios)
    configs = config_names(ratios)
    if args.runs is None:
        args.runs = 1 if args.small else 3
    if args.prefill_runs is None:
        args.prefill_runs = 1 if args.small else 2
    if args.docs is None:
        args.docs = 2 if args.small else 4
    with timed_section() as clock:
        lm = load_model(args.model)
        plain_prefill_s(lm, lm.encode("warm up the kernels once"))  # outside every timing
        curves: dict[str, list[dict[str, Any]]] = {"context": [], "documents": []}
        jobs: list[tuple[str, int, str, dict[str, Any]]] = []
        with tempfile.TemporaryDirectory(prefix="beacon-rag-scaling-") as tmp:
            scratch = Path(tmp)
            beacon_options = pin_plugin(lm, scratch) if ratios else {}
            points = [("context", n, args.docs) for n in lengths] + [("documents", k * tokens_per_doc, k)
                                                                       for k in doc_counts]
            for curve, context_tokens, docs in points:
                logger.info("scaling: %s curve, %d tokens, %d documents", curve, context_tokens, docs)
                row, point_jobs = measure_point(lm, context_tokens, docs, configs, args, scratch / curve,
                                                beacon_options)
                curves[curve].append(row)
                jobs += [(curve, len(curves[curve]) - 1, j["config"], j) for j in point_jobs]
            times = _run_probe([j for *_, j in jobs], args.runs, args.model, scratch)
            beacon = _beacon_settings(lm, ratios, beacon_options)
        for (curve, index, config, _), seconds in zip(jobs, times):
            cfg = curves[curve][index]["configs"][config]
            if isinstance(seconds, str):
                logger.error("warm-disk probe, %s at %s: %s", config, curve, seconds)
                cfg["warm_disk_s"], cfg["warm_disk_error"] = None, seconds
            else:
                cfg["warm_disk_s"] = seconds
    return {
        "bench": "scaling",
        "setting": "small" if args.small else "custom" if (args.lengths or args.doc_counts) else "full",
        "model": lm.name,
        "question": QUESTION,
        "configs": configs,
        "ratios": list(ratios),
        "beacon": beacon,
        "documents_for_context_curve": args.docs,
        "tokens_per_document_for_documents_curve": tokens_per_doc,
        "runs": args.runs,
        "prefill_runs": args.prefill_runs,
        "cold_runs": args.cold_runs,
        "curves": curves,
        "full_kv_bytes_per_token": lm.kv_bytes_per_token(),
        "duration_s": clock.seconds,
        "machine": machine_info(),
    }


def _beacon_settings(lm: LoadedModel, ratios: tuple[int, ...], options: dict[str, Any]) -> dict[str, Any]:
    """What the beacon configurations really ran with (plug-in, window), from the engine itself."""
    if not ratios:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = build_engine(lm, f"beacon-r{ratios[0]}", tmp, memory_bytes=0, beacon_options=options)
        spec = dict(engine.compressor.spec())
        engine.close()
    spec.pop("ratio", None)
    return spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", action="store_true", help="CI setting: short contexts, few points")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help=f"context lengths in tokens (default {' '.join(map(str, LENGTHS))})")
    parser.add_argument("--docs", type=int, default=None,
                        help="documents the context is split into, context curve (default 4; --small 2)")
    parser.add_argument("--doc-counts", type=int, nargs="+", default=None,
                        help=f"document counts (default {' '.join(map(str, DOC_COUNTS))})")
    parser.add_argument("--tokens-per-doc", type=int, default=None, help="document size for the documents curve")
    parser.add_argument("--ratios", type=int, nargs="*", default=list(BEACON_RATIOS), help="beacon ratios")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs of the cheap figures, best kept (default 3; --small 1)")
    parser.add_argument("--prefill-runs", type=int, default=None,
                        help="timed runs of the full prefill (default 2; --small 1)")
    parser.add_argument("--cold-runs", type=int, default=1, help="cold runs per configuration (fresh cache each)")
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: embedded SmolLM2)")
    parser.add_argument("--output", default=None, help="JSON file (default: benchmarks/results/scaling.json)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--json", action="store_true", help="print one JSON line")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure and write the JSON (what ``beacon-rag bench scaling`` calls)."""
    result = measure(args)
    if not args.no_save:
        save_result(result, Path(args.output) if args.output else results_dir() / "scaling.json")
    return result


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--warm-disk-probe"]:
        spec = json.loads(Path(argv[1]).read_text())
        print(json.dumps(warm_disk_probe(spec["jobs"], spec["runs"], spec["model"])))
        return
    parser = argparse.ArgumentParser(prog="python -m beacon_rag.bench.scaling", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    print(json.dumps(run(args), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
