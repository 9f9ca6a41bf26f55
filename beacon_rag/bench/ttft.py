"""``beacon-rag bench ttft``: time to first token, cold and warm, against a plain prefill.

Every figure is the best of several runs in the same invocation, on the same prompt:
* ``full_prefill_s``: plain transformers on the whole prompt, no cache (what users do today);
* ``question_only_s``: the question with no context at all (the floor nothing can beat);
* ``cold_s``: beacon-rag with an empty cache (compress + store + answer);
* ``warm_ram_s``: the same request again in the same process;
* ``warm_disk_s``: a fresh process whose RAM tier is empty and whose disk tier is warm,
  timed after its model load (that is what a restarted server pays).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from beacon_rag.bench.corpus import make_documents
from beacon_rag.compressors import compressor_options, parse_ratio
from beacon_rag.compressors.beacon import KEEP_CHOICES
from beacon_rag.engine import Engine, rag_messages
from beacon_rag.generation import now
from beacon_rag.models import LoadedModel, load_model

QUESTION = "Which Python modules do these documents describe, and what is each one for?"
ANSWER_TOKENS = 24


def _best(runs: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(runs))


def plain_prefill_s(lm: LoadedModel, ids: list[int]) -> float:
    """Time to first token of plain transformers on ``ids`` (one forward, last logits, argmax)."""
    started = now()
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids], device=lm.device), logits_to_keep=1).logits
    int(torch.argmax(logits[0, -1]))
    return now() - started


def _engine(lm: LoadedModel, args: argparse.Namespace, cache_dir: str, memory_bytes: int | None = None) -> Engine:
    options = compressor_options(args.ratio, args.window, args.keep)
    kwargs: dict[str, Any] = {}
    if memory_bytes is not None:
        kwargs["memory_bytes"] = memory_bytes
    return Engine(lm, compressor=args.compressor, compressor_options=options, placement=args.placement,
                  repair_tokens=args.repair_tokens, cache_dir=cache_dir, **kwargs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    lm = load_model(args.model)
    documents = make_documents(lm, args.context_tokens, args.docs)
    messages = rag_messages(QUESTION, documents)
    question_messages = rag_messages(QUESTION, [])

    with tempfile.TemporaryDirectory(prefix="beacon-rag-bench-") as scratch:
        probe = _engine(lm, args, f"{scratch}/probe")
        ids = probe.prompt_token_ids(messages)
        question_ids = probe.prompt_token_ids(question_messages)
        plain_prefill_s(lm, question_ids)  # warm up kernels once, outside every timing
        full = _best(args.runs, lambda: plain_prefill_s(lm, ids))
        floor = _best(args.runs, lambda: plain_prefill_s(lm, question_ids))

        cold_times, cold = [], None
        for attempt in range(args.cold_runs):
            engine = _engine(lm, args, f"{scratch}/cold{attempt}")
            result = engine.generate(messages, max_new_tokens=ANSWER_TOKENS)
            cold_times.append(result.ttft_s)
            cold = (engine, result)
        assert cold is not None
        engine, cold_result = cold
        warm_results = [engine.generate(messages, max_new_tokens=1) for _ in range(args.runs)]
        warm_answer = engine.generate(messages, max_new_tokens=ANSWER_TOKENS)
        disk = _warm_disk_in_fresh_process(args, engine.cache_dir)

    segments = cold_result.segments
    context_tokens = sum(u.raw_tokens for u in segments)
    stored_bytes = sum(u.nbytes for u in segments)
    return {
        "model": lm.name,
        "compressor": args.compressor,
        "ratio": args.ratio,
        "window": args.window,
        "keep": args.keep,
        "placement": args.placement,
        "context_tokens": context_tokens,
        "documents": args.docs,
        "question_tokens": len(ids) - context_tokens,  # the live tail: question + generation prompt
        "prompt_tokens": len(ids),
        "full_prefill_s": full,
        "cold_s": min(cold_times),
        "warm_ram_s": min(r.ttft_s for r in warm_results),
        "warm_disk_s": disk["warm_disk_s"],
        "question_only_s": floor,
        "kv_bytes_per_token": stored_bytes / max(context_tokens, 1),
        "full_kv_bytes_per_token": lm.kv_bytes_per_token(),
        "same_answer": cold_result.text == warm_answer.text == disk["answer"],
        "answer": cold_result.text,
        "runs": args.runs,
        "threads": torch.get_num_threads(),
    }


def _warm_disk_in_fresh_process(args: argparse.Namespace, cache_dir: Any) -> dict[str, Any]:
    """Run the warm-disk probe in a new interpreter so nothing of this process's RAM helps it."""
    command = [sys.executable, "-m", "beacon_rag.bench.ttft", "--warm-disk-probe", "--cache-dir", str(cache_dir),
               *_forwarded(args)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"warm-disk probe failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--context-tokens", str(args.context_tokens), "--docs", str(args.docs), "--compressor", args.compressor,
           "--placement", args.placement, "--repair-tokens", str(args.repair_tokens), "--runs", str(args.runs)]
    if args.ratio is not None:
        out += ["--ratio", str(args.ratio)]
    if args.window is not None:
        out += ["--window", str(args.window)]
    if args.keep is not None:  # the fresh process must build the same cache keys
        out += ["--keep", args.keep]
    if args.model:
        out += ["--model", args.model]
    return out


def warm_disk_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Inside the fresh process: RAM tier of size zero, so every run reads the disk tier."""
    lm = load_model(args.model)
    messages = rag_messages(QUESTION, make_documents(lm, args.context_tokens, args.docs))
    engine = _engine(lm, args, args.cache_dir, memory_bytes=0)
    plain_prefill_s(lm, engine.prompt_token_ids(rag_messages(QUESTION, [])))  # same kernel warm-up as above
    times = []
    for _ in range(args.runs):
        result = engine.generate(messages, max_new_tokens=1)
        if {u.source for u in result.segments} != {"disk"}:
            raise RuntimeError(f"expected every segment from disk, got {[u.source for u in result.segments]}")
        times.append(result.ttft_s)
    answer = engine.generate(messages, max_new_tokens=ANSWER_TOKENS).text
    return {"warm_disk_s": min(times), "answer": answer}


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """The request being timed (context, documents, compressor, placement, model, runs): shared
    with ``bench redis`` so both benches time the same kind of request."""
    parser.add_argument("--context-tokens", type=int, default=2048, help="tokens of context in all documents")
    parser.add_argument("--docs", type=int, default=4, help="number of documents the context is split into")
    parser.add_argument("--compressor", default="exact")
    parser.add_argument("--ratio", type=parse_ratio, default=None,
                        help="compression ratio (beacon): 2, 4, 8, 16, 32, 0 (raw) or adapt")
    parser.add_argument("--window", type=int, default=None, help="beacon window in raw tokens")
    parser.add_argument("--keep", choices=KEEP_CHOICES, default=None,
                        help="beacon: verbatim tokens kept raw (digits, numbers, none); default: the plug-in's")
    parser.add_argument("--placement", default="chained", choices=["chained", "independent"])
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: embedded SmolLM2)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (best is reported)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser)
    parser.add_argument("--repair-tokens", type=int, default=0)
    parser.add_argument("--cold-runs", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beacon_rag.bench.ttft")
    add_arguments(parser)
    parser.add_argument("--warm-disk-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warm_disk_probe:
        print(json.dumps(warm_disk_probe(args)))
    else:
        print(json.dumps(run(args), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
