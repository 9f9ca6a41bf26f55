"""Answer a fixed query mix twice with the disk cache on a "full disk" (a real write failure).

Run as ``python -m tests.helpers.full_disk CACHE_DIR LIMIT_BYTES`` from the project root. With a
positive LIMIT_BYTES the process's file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes every write
that would grow a file past it fail with EFBIG, exactly as a full disk fails with ENOSPC, once the
cache directory exists. 0 means no limit (the reference run). Prints one JSON line per answer and a
last line with the disk tier's statistics.
"""

from __future__ import annotations

import json
import logging
import resource
import signal
import sys

import torch

from beacon_rag import Engine, rag_messages
from tests.helpers.worker import CORPUS, QUESTIONS, tokenizer


def main() -> None:
    sys.path.insert(0, "tests")
    from conftest import tiny_model

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cache_dir, limit = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    engine = Engine(tiny_model("llama", tokenizer(), seed=0), cache_dir=cache_dir, memory_bytes=1 << 24)
    if limit > 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    for round_ in range(2):
        for index in range(6):
            docs = [CORPUS[index], CORPUS[(index + 3) % len(CORPUS)]]
            result = engine.generate(rag_messages(QUESTIONS[index % len(QUESTIONS)], docs), max_new_tokens=4)
            print(json.dumps({"round": round_, "query": index, "tokens": result.token_ids,
                              "sources": [u.source for u in result.segments]}), flush=True)
    print(json.dumps({"disk": engine.store.disk.stats()}), flush=True)


if __name__ == "__main__":
    main()
