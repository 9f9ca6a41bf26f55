"""A worker process sharing a Redis tier: a tiny model, its OWN disk directory, a query mix.

Run as ``python -m tests.helpers.redis_worker CACHE_DIR REDIS_URL NAMESPACE SEED QUERIES`` from
the project root. Prints one JSON line per answered query (as tests/helpers/worker.py does), then
one line ``{"stats": ...}`` with the store's counters. Stdin is read before each query when the
environment variable REDIS_WORKER_STEP is set, so a test can act (kill the server) between queries.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import torch

from beacon_rag import Engine, rag_messages
from tests.helpers.worker import CORPUS, QUESTIONS, queries, tokenizer


def main() -> None:
    sys.path.insert(0, "tests")
    from conftest import tiny_model

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cache_dir, url, namespace, seed, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    step = bool(os.environ.get("REDIS_WORKER_STEP"))
    torch.set_num_threads(1)
    lm = tiny_model("llama", tokenizer(), seed=0)
    engine = Engine(lm, cache_dir=cache_dir, memory_bytes=1 << 20, redis_url=url, redis_namespace=namespace)
    # Quick retries so that a test can see the tier come back within seconds.
    engine.store.remote.retry_initial = 0.2
    engine.store.remote.retry_max = 1.0
    print(json.dumps({"ready": True}), flush=True)
    for index, (docs, question) in enumerate(queries(count, seed)):
        if step:
            sys.stdin.readline()
        result = engine.generate(rag_messages(QUESTIONS[question], [CORPUS[d] for d in docs]), max_new_tokens=4)
        print(json.dumps({"query": index, "docs": docs, "question": question, "tokens": result.token_ids,
                          "sources": {u.key: u.source for u in result.segments}}), flush=True)
    if step:
        # Wait for the test to close stdin: it reads the rows with readline() and the stats with
        # communicate(), which reads the pipe directly and would miss a stats line that a readline()
        # had already pulled into its buffer together with the last row.
        sys.stdin.readline()
    stats = engine.store.stats()
    print(json.dumps({"stats": {"redis": stats["redis"], "computed": stats["computed"]}}, default=str), flush=True)


if __name__ == "__main__":
    main()
