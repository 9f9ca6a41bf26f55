"""Several worker processes behind one corpus, sharing compressed KV through Redis.

    python examples/multi_worker.py                      # 2 workers, a throwaway local redis-server
    python examples/multi_worker.py --workers 3 --redis-url redis://cache-host:6379/0

Each worker is a separate process with its own RAM and its own disk folder, as if it ran on its own
machine; the only thing they share is the Redis server. All workers start together on the same
questions over the bundled sample documents: for each segment one worker wins the Redis lease and
compresses it, the others wait for its entry and read it from Redis (then from their own RAM/disk).
The summary shows every segment compressed once across all workers and the same answers everywhere.

Without ``--redis-url`` (and without ``$BEACON_RAG_REDIS_URL``) the example starts its own
``redis-server`` on loopback (Debian/Ubuntu: ``apt-get install redis-server``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections import Counter, defaultdict

QUESTIONS = [
    "Who built the lighthouse on Kestrel Point, and when was it completed?",
    "How tall is the lighthouse?",
    "Summarise the documents in one sentence.",
]


def worker(args: argparse.Namespace) -> None:
    """One worker: answer every question over the sample documents, print one JSON line each."""
    from transformers.utils import logging as hf_logging

    from beacon_rag import Engine, rag_messages
    from beacon_rag.documents import read_documents, sample_documents_dir

    hf_logging.disable_progress_bar()  # N workers' load bars would bury the summary

    documents = read_documents([sample_documents_dir()])
    texts, titles = [d.text for d in documents], [d.title for d in documents]
    engine = Engine(cache_dir=args.cache_dir, redis_url=args.redis_url, redis_namespace=args.namespace)
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()  # start together, so the workers really race for the same segments
    for question in QUESTIONS:
        result = engine.generate(rag_messages(question, texts, titles=titles), max_new_tokens=args.max_tokens)
        print(json.dumps({"question": question, "answer": result.text, "ttft_s": result.ttft_s,
                          "sources": {u.key: u.source for u in result.segments}}), flush=True)
    print(json.dumps({"redis": engine.store.stats()["redis"]}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis-url", default=os.environ.get("BEACON_RAG_REDIS_URL"))
    parser.add_argument("--namespace", default=None, help="key prefix (default: a fresh one per run)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.workers < 1:
        parser.error("--workers must be >= 1")

    namespace = args.namespace or f"example-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        url = args.redis_url
        if not url:
            from beacon_rag.bench.redis_bench import LocalRedisServer

            url = stack.enter_context(LocalRedisServer()).url
            print(f"started a throwaway redis-server at {url}")
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="beacon-rag-workers-"))
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "TOKENIZERS_PARALLELISM": "false"}
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", "--cache-dir", f"{scratch}/worker{i}", "--redis-url", url,
                 "--namespace", namespace, "--max-tokens", str(args.max_tokens)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            for i in range(args.workers)
        ]
        for proc in procs:  # wait until every worker has loaded its model
            line = proc.stdout.readline()
            if not line.startswith('{"ready"'):
                raise SystemExit(f"a worker failed to start: {line!r}")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate()[0] for proc in procs]
        if any(proc.returncode for proc in procs):
            raise SystemExit("a worker failed; see its messages above")
        if not args.namespace:  # leave a shared server as we found it
            from beacon_rag.store import RedisTier

            RedisTier(url, namespace=namespace).clear()

    compressed_by: dict[str, list[int]] = defaultdict(list)
    answers: dict[str, set[str]] = defaultdict(set)
    for index, out in enumerate(outputs):
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        sources = Counter(s for r in rows if "sources" in r for s in r["sources"].values())
        redis = next(r["redis"] for r in rows if "redis" in r)
        print(f"worker {index}: segments {dict(sources)}; Redis bytes sent {redis['bytes_sent']:,}, "
              f"received {redis['bytes_received']:,}")
        for r in rows:
            if "sources" in r:
                answers[r["question"]].add(r["answer"])
                for key, source in r["sources"].items():
                    if source == "computed":
                        compressed_by[key].append(index)
    extra = sum(len(v) - 1 for v in compressed_by.values())
    print(f"{len(compressed_by)} distinct segments compressed, {extra} duplicate compressions across "
          f"{args.workers} workers; same answer in every worker: {all(len(a) == 1 for a in answers.values())}")
    for question, texts in answers.items():
        print(f"Q: {question}\nA: {next(iter(texts)).strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
