"""Soak test of the RAM and disk tiers: a long random workload must never break their byte budgets.

The workload is what a busy RAG server does to the store: lookups drawn Zipf-like over a corpus
of entries of mixed sizes, most of them repeats, with a miss computing and writing the entry.
Every step checks that what came back is exactly what was computed for that key (never another
entry, never a damaged one), that the RAM tier holds its budget and matches a reference LRU
simulation key for key, and that the disk tier's volume stays within its budget. The figures are
the worst ratios seen, so a single breach anywhere in the run shows up.

``beacon-rag bench soak --seconds 180`` runs the few-minute version; the CI test runs ~10 s.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from beacon_rag.store import DiskTier, Entry, MemoryTier, TieredStore

# diskcache's volume estimate counts SQLite pages too, and it culls after a write lands, so the
# disk may exceed its limit by at most about one entry plus the index pages.
DISK_SLACK_ENTRIES = 1


def entry_for(key: str, min_bytes: int, max_bytes: int) -> Entry:
    """The one entry that belongs to ``key``: size and contents derived from the key's sha256."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    rng = random.Random(seed)
    count = rng.randrange(min_bytes, max_bytes + 1) // 4
    generator = torch.Generator().manual_seed(seed)
    return Entry({"kv": torch.randn(count, generator=generator)}, {"key": key})


def soak(directory: Path, *, seconds: float, keys: int, memory_bytes: int, disk_bytes: int,
         min_entry_bytes: int, max_entry_bytes: int, zipf: float = 1.1, seed: int = 0,
         progress: bool = False) -> dict[str, Any]:
    """Run the workload for ``seconds`` and return counts and the worst budget ratios seen."""
    rng = random.Random(seed)
    names = [f"soak-{seed}-{i}" for i in range(keys)]
    weights = [1.0 / (rank + 1) ** zipf for rank in range(keys)]
    memory = MemoryTier(memory_bytes)
    disk = DiskTier(directory, max_bytes=disk_bytes)
    store = TieredStore(memory, disk)
    reference: OrderedDict[str, int] = OrderedDict()  # the RAM tier as an LRU should be
    reference_bytes = 0
    sources: dict[str, int] = {"memory": 0, "disk": 0, "computed": 0}
    worst_memory = worst_disk = 0.0
    lru_mismatches = wrong = steps = 0
    recent: list[str] = []
    started = time.perf_counter()
    bar = tqdm(total=round(seconds), unit="s", disable=not progress, desc="soak")
    while (elapsed := time.perf_counter() - started) < seconds:
        bar.update(round(elapsed) - bar.n)
        name = rng.choices(names, weights)[0]
        expected = entry_for(name, min_entry_bytes, max_entry_bytes)
        got, source = store.get_or_compute(name, lambda expected=expected: expected)
        sources[source] += 1
        steps += 1
        if got.meta.get("key") != name or not torch.equal(got.tensors["kv"], expected.tensors["kv"]):
            wrong += 1
        size = expected.nbytes
        reference.pop(name, None)
        reference_bytes = sum(reference.values())
        if size <= memory_bytes:
            reference[name] = size
            reference_bytes += size
            while reference_bytes > memory_bytes:
                _, dropped = reference.popitem(last=False)
                reference_bytes -= dropped
        lru_mismatches += memory.keys_lru() != list(reference)
        worst_memory = max(worst_memory, memory.stats()["bytes"] / max(memory_bytes, 1))
        worst_disk = max(worst_disk, disk.stats()["bytes"] / max(disk_bytes, 1))
        if source != "memory":  # a RAM hit never touches the disk, so it does not refresh its recency
            recent.append(name)
    bar.close()
    # The disk evicts least recently used first: the entries it saw last that fit in half its
    # budget must all still be there.
    newest, budget = [], disk_bytes // 2
    for name in reversed(recent):
        if name in newest:
            continue
        budget -= entry_for(name, min_entry_bytes, max_entry_bytes).nbytes
        if budget < 0:
            break
        newest.append(name)
    newest_missing = sum(name not in disk for name in newest)
    disk_stats = disk.stats()
    disk.close()
    duration = time.perf_counter() - started
    return {
        "seconds": round(duration, 1),
        "steps": steps,
        "steps_per_s": round(steps / duration, 1),
        "keys": keys,
        "entry_bytes": [min_entry_bytes, max_entry_bytes],
        "memory_budget": memory_bytes,
        "disk_budget": disk_bytes,
        "sources": sources,
        "wrong_entries": wrong,
        "memory_lru_mismatches": lru_mismatches,
        "worst_memory_over_budget": round(worst_memory, 4),
        "worst_disk_over_budget": round(worst_disk, 4),
        "disk_slack_allowed": round(1 + DISK_SLACK_ENTRIES * max_entry_bytes / max(disk_bytes, 1), 4),
        "newest_on_disk_checked": len(newest),
        "newest_on_disk_missing": newest_missing,
        "disk_entries_at_end": disk_stats["entries"],
        "corrupt_reads": disk_stats["corrupt"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="beacon-rag-soak-") as tmp:
        directory = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        return soak(directory, seconds=args.seconds, keys=args.keys, memory_bytes=args.memory_bytes,
                    disk_bytes=args.disk_bytes, min_entry_bytes=args.min_entry_bytes,
                    max_entry_bytes=args.max_entry_bytes, seed=args.seed, progress=not args.json)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=180.0, help="how long to run the workload")
    parser.add_argument("--keys", type=int, default=400, help="distinct entries in the corpus")
    parser.add_argument("--memory-bytes", type=int, default=8 << 20, help="RAM tier budget")
    parser.add_argument("--disk-bytes", type=int, default=24 << 20, help="disk tier budget")
    parser.add_argument("--min-entry-bytes", type=int, default=16 << 10)
    parser.add_argument("--max-entry-bytes", type=int, default=512 << 10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="disk tier directory (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
