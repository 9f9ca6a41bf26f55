"""``beacon-rag bench memory``: what each configuration costs in RAM and on disk.

Why each figure, per configuration (plain transformers full prefill, transformers prompt reuse,
``exact``, ``beacon-r{R}``) on the same documents:

* ``kv_bytes_per_token``: bytes of KV kept per context token (what a cache holds; the engine's own
  segment sizes, every cached segment counted, divided by the context tokens they stand for);
* ``peak_rss_bytes`` / ``peak_added_bytes``: the process's resident-set high-water mark during one
  cold request, and how far above the resident set before it (model loaded, kernels warm). Each
  configuration runs in its own fresh process, and on Linux the high-water mark is reset just
  before the request (``/proc/self/clear_refs``), so model loading does not hide the request's peak;
* ``disk_bytes_per_document``: the exact bytes the disk tier writes for one document's entry
  (safetensors payload + JSON header), and ``cache_dir_bytes_per_document`` with the disk tier's
  index files included;
* ``documents_in_1gb_ram_tier``: a real ``MemoryTier`` with a 1 GiB budget (the engine's default)
  filled with copies of one document's real entry under distinct keys until it first evicts.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from beacon_rag.bench.corpus import make_documents
from beacon_rag.bench.report import machine_info, results_dir, save_result, timed_section
from beacon_rag.bench.scaling import BEACON_RATIOS, build_engine, config_names, first_token_after, prompt_parts
from beacon_rag.bench.ttft import QUESTION
from beacon_rag.engine import rag_messages
from beacon_rag.models import load_model
from beacon_rag.store import MemoryTier
from beacon_rag.store.codec import encode_entry

logger = logging.getLogger(__name__)

RAM_TIER_BYTES = 1 << 30
PLAIN_CONFIGS = ("plain", "prompt-reuse")


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    # ru_maxrss is KiB on Linux, bytes on macOS; only reached off Linux.
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def documents_in_tier(entry: Any, budget: int) -> int:
    """Fill a real RAM tier with one entry under distinct keys until it first evicts."""
    tier = MemoryTier(budget)
    if entry.nbytes == 0 or entry.nbytes > budget:
        return 0
    count = 0
    while True:
        tier.put(f"doc-{count}", entry)
        if tier.stats()["evictions"]:
            return count
        count += 1


def probe(configs: list[str], context_tokens: int, docs: int, cache_root: str, model: str | None) -> list[dict[str, Any]]:
    """Configurations in this fresh process, one after the other, the peak reset before each.

    Where the peak cannot be reset (not Linux) only the first configuration's peak is clean, so
    the caller sends one configuration per process there.
    """
    lm = load_model(model)
    messages = rag_messages(QUESTION, make_documents(lm, context_tokens, docs))
    prefix, tail = prompt_parts(lm, messages)
    first_token_after(lm, lm.encode("warm up the kernels once"))
    rows = []
    for config in configs:
        gc.collect()
        peak_reset = reset_peak()
        before = rss_bytes()
        out: dict[str, Any] = {"config": config, "context_tokens": len(prefix), "peak_reset": peak_reset,
                               "model": lm.name, "full_kv_bytes_per_token": lm.kv_bytes_per_token()}
        if config == "plain":
            first_token_after(lm, prefix + tail)
            out["kv_bytes_per_token"] = lm.kv_bytes_per_token()  # what the transient cache held
        elif config == "prompt-reuse":
            _, cache = first_token_after(lm, prefix)
            first_token_after(lm, tail, copy.deepcopy(cache))  # the copy is part of the method's footprint
            held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
            out["kv_bytes_per_token"] = held / len(prefix)
            del cache
        else:
            out.update(_engine_request(lm, config, messages, Path(cache_root) / config, len(prefix)))
        peak = peak_rss_bytes()
        out.update({"rss_before_bytes": before, "peak_rss_bytes": peak, "peak_added_bytes": peak - before})
        rows.append(out)
    return rows


def _engine_request(lm: Any, config: str, messages: Any, cache_dir: Path, context_tokens: int) -> dict[str, Any]:
    engine = build_engine(lm, config, cache_dir)
    uses = engine.generate(messages, max_new_tokens=1).segments
    documents = [u for u in uses if u.kind == "document"]
    entries = [engine.store.memory.get(u.key) for u in documents]
    if not documents or any(e is None for e in entries):
        raise RuntimeError(f"{config}: a document entry is missing from the RAM tier after a cold request")
    out: dict[str, Any] = {
        "kv_bytes_per_token": sum(u.nbytes for u in uses) / context_tokens,
        "disk_bytes_per_document": sum(len(encode_entry(u.key, e)) for u, e in zip(documents, entries))
        / len(documents),
        "ram_bytes_per_document": sum(e.nbytes for e in entries) / len(entries),
    }
    # Documents differ by a token or two (chat glue); the largest entry gives the conservative count.
    largest = max(entries, key=lambda e: e.nbytes)
    out["tier_entry_bytes"] = largest.nbytes
    out["documents_in_1gb_ram_tier"] = documents_in_tier(largest, RAM_TIER_BYTES)
    engine.close()
    out["cache_dir_bytes_per_document"] = directory_bytes(cache_dir) / len(documents)
    return out


def _run_probe(configs: list[str], args: argparse.Namespace, context_tokens: int, docs: int,
               cache_root: Path) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "beacon_rag.bench.memory_bench", "--probe", ",".join(configs),
               "--context-tokens", str(context_tokens), "--docs", str(docs), "--cache-dir", str(cache_root)]
    if args.model:
        command += ["--model", args.model]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {configs} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    docs = args.docs or (2 if args.small else 16)
    context_tokens = args.context_tokens or (256 if args.small else 4096)
    configs = [*PLAIN_CONFIGS, *config_names(tuple(args.ratios))]
    with timed_section() as clock:
        rows = []
        with tempfile.TemporaryDirectory(prefix="beacon-rag-memory-") as tmp:
            # One fresh process per configuration where the peak cannot be reset in-process, or when
            # asked (the full setting: no allocator state carried from one method to the next).
            separate = args.separate_processes or not reset_peak()
            for group in ([[c] for c in configs] if separate else [configs]):
                logger.info("memory: %s", group)
                rows += _run_probe(group, args, context_tokens, docs, Path(tmp))
    return {
        "bench": "memory",
        "setting": "small" if args.small else "full",
        "model": rows[0]["model"],
        "context_tokens": rows[0]["context_tokens"],
        "requested_context_tokens": context_tokens,
        "documents": docs,
        "tokens_per_document": context_tokens // docs,
        "ram_tier_bytes": RAM_TIER_BYTES,
        "separate_processes": separate,
        "full_kv_bytes_per_token": rows[0]["full_kv_bytes_per_token"],
        "configs": rows,
        "duration_s": clock.seconds,
        "machine": machine_info(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure and write the JSON (what ``beacon-rag bench memory`` calls)."""
    result = measure(args)
    if not args.no_save:
        save_result(result, Path(args.output) if args.output else results_dir() / "memory.json")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", action="store_true", help="CI setting: 256 tokens in 2 documents")
    parser.add_argument("--context-tokens", type=int, default=None, help="tokens of context (default 4096)")
    parser.add_argument("--docs", type=int, default=None, help="documents the context is split into (default 16)")
    parser.add_argument("--ratios", type=int, nargs="*", default=list(BEACON_RATIOS), help="beacon ratios")
    parser.add_argument("--separate-processes", action="store_true",
                        help="one fresh process per configuration (slower; each starts from the same state)")
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: embedded SmolLM2)")
    parser.add_argument("--output", default=None, help="JSON file (default: benchmarks/results/memory.json)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--json", action="store_true", help="print one JSON line")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beacon_rag.bench.memory_bench", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe.split(","), args.context_tokens, args.docs, args.cache_dir, args.model)))
        return
    print(json.dumps(run(args), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
