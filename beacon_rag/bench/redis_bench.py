"""``beacon-rag bench redis``: time to first token from a Redis hit vs a local disk hit vs a full prefill.

Also the bytes each document costs on the wire. One invocation, the same prompt for every figure:
* ``full_prefill_s``: plain transformers on the whole prompt (no cache at all);
* ``cold_s``: an engine with empty tiers compresses every segment and writes it to disk and Redis;
* ``redis_hit_s``: a fresh engine (empty RAM, empty disk folder) reads every segment from Redis and
  writes it back to its disk (what a new worker on another machine pays);
* ``redis_hit_no_disk_s``: the same without a disk tier (Redis read and decode only);
* ``disk_hit_s``: a fresh engine (empty RAM, Redis off) reads the disk folder the cold run wrote;
* ``bytes_per_document``: the size of each document's stored blob, i.e. what one worker sends once
  and every other worker receives once.

Without ``--redis-url`` the bench runs its own throwaway ``redis-server`` (see
:class:`LocalRedisServer`: loopback, a free port, no persistence), so the network cost measured is
loopback's; on a real network add bytes / bandwidth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from beacon_rag.bench.corpus import make_documents
from beacon_rag.bench.ttft import ANSWER_TOKENS, QUESTION, add_setting_arguments, plain_prefill_s
from beacon_rag.compressors import compressor_options
from beacon_rag.engine import Engine, rag_messages
from beacon_rag.models import LoadedModel, load_model
from beacon_rag.store import RedisTier

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ a throwaway server


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` on PATH (or in /usr/bin, where Debian puts it), or None."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalRedisServer:
    """Start, kill and restart one loopback ``redis-server``; use as a context manager.

    ``maxmemory`` (bytes, 0 = unlimited) and ``policy`` are passed to the server, so tests and
    benchmarks exercise the server's own memory limit and eviction.
    """

    def __init__(self, *, maxmemory: int = 256 * 2**20, policy: str = "allkeys-lru",
                 port: int | None = None) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        self.binary = binary
        self.maxmemory = maxmemory
        self.policy = policy
        self.port = port or free_port()
        self._workdir = Path(tempfile.mkdtemp(prefix="beacon-rag-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> LocalRedisServer:
        """Start the server (on the same port as before after a kill) and wait until it answers."""
        if self.process is not None and self.process.poll() is None:
            return self
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--save", "", "--appendonly", "no", "--dir", str(self._workdir),
            "--maxmemory", str(self.maxmemory), "--maxmemory-policy", self.policy,
            "--daemonize", "no", "--loglevel", "warning",
        ]
        log = open(self._workdir / "server.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self._workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log_tail()}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s: {self.log_tail()}")

    def ping(self) -> bool:
        """True if the server answers PING (a raw RESP exchange, no client library needed)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server, as a crash or a lost machine would (no clean shutdown)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self._workdir / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.kill()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> LocalRedisServer:  # noqa: PYI034 - the class is not meant to be subclassed
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ the benchmark
def _engine(lm: LoadedModel, args: argparse.Namespace, cache_dir: str | None, *, redis_url: str,
            namespace: str, memory_bytes: int = 0) -> Engine:
    options = compressor_options(args.ratio, args.window, args.keep)
    return Engine(lm, compressor=args.compressor, compressor_options=options, placement=args.placement,
                  cache_dir=cache_dir, persist=cache_dir is not None, memory_bytes=memory_bytes,
                  redis_url=redis_url, redis_namespace=namespace)


def _timed_hit(engine: Engine, messages: Any, source: str) -> float:
    """Time to first token of a fresh engine whose every segment must come from ``source``."""
    result = engine.generate(messages, max_new_tokens=1)
    sources = {u.source for u in result.segments}
    engine.store.close()  # waits for background disk copies, outside the timing
    if sources != {source}:
        raise RuntimeError(f"expected every segment from {source}, got {sorted(sources)}")
    return result.ttft_s


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Cold (compress, write to disk and Redis), then hits from Redis, from disk, and a full prefill."""
    lm = load_model(args.model)
    documents = make_documents(lm, args.context_tokens, args.docs)
    messages = rag_messages(QUESTION, documents)
    namespace = f"bench-{uuid.uuid4().hex[:12]}"  # never collides with a deployment on a shared server
    with contextlib.ExitStack() as stack:
        url = args.redis_url
        server = None
        if not url:
            server = stack.enter_context(LocalRedisServer(maxmemory=args.maxmemory))
            url = server.url
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="beacon-rag-bench-redis-"))
        observer = RedisTier(url, namespace=namespace)
        stack.callback(observer.clear)

        writer = _engine(lm, args, f"{scratch}/writer", redis_url=url, namespace=namespace)
        ids = writer.prompt_token_ids(messages)
        question_ids = writer.prompt_token_ids(rag_messages(QUESTION, []))
        plain_prefill_s(lm, question_ids)  # warm up kernels once, outside every timing
        full = min(plain_prefill_s(lm, ids) for _ in range(args.runs))
        floor = min(plain_prefill_s(lm, question_ids) for _ in range(args.runs))

        cold = writer.generate(messages, max_new_tokens=ANSWER_TOKENS)
        if {u.source for u in cold.segments} != {"computed"}:
            raise RuntimeError("the cold run found cached segments; the namespace or cache dir is not fresh")
        sent = writer.store.remote.stats()["bytes_sent"]
        writer.store.close()
        per_document = []
        for use in cold.segments:
            blob = observer.get_blob(use.key)
            if blob is None:
                raise RuntimeError(f"segment {use.key[:12]} is not in Redis after the cold run")
            if use.kind == "document":
                per_document.append({"tokens": use.raw_tokens, "bytes": len(blob),
                                     "bytes_per_token": len(blob) / max(use.raw_tokens, 1)})

        # Rounds interleave the three kinds, so that load from other work on the machine hits all alike.
        redis_hit, redis_only, disk_hit = [], [], []
        for attempt in range(args.runs):
            redis_hit.append(_timed_hit(
                _engine(lm, args, f"{scratch}/reader{attempt}", redis_url=url, namespace=namespace), messages, "redis"))
            redis_only.append(_timed_hit(_engine(lm, args, None, redis_url=url, namespace=namespace), messages, "redis"))
            disk_hit.append(_timed_hit(
                _engine(lm, args, f"{scratch}/writer", redis_url="", namespace=namespace), messages, "disk"))

        reader = _engine(lm, args, None, redis_url=url, namespace=namespace)
        received_before = reader.store.remote.stats()["bytes_received"]
        from_redis = reader.generate(messages, max_new_tokens=ANSWER_TOKENS)
        received = reader.store.remote.stats()["bytes_received"] - received_before
        server_memory = observer.server_memory()

    context_tokens = sum(u.raw_tokens for u in cold.segments)
    return {
        "model": lm.name,
        "compressor": args.compressor,
        "ratio": args.ratio,
        "window": args.window,
        "keep": args.keep,
        "placement": args.placement,
        "documents": args.docs,
        "context_tokens": context_tokens,
        "prompt_tokens": len(ids),
        "segments": len(cold.segments),
        "redis": "local redis-server on loopback (started by the bench)" if server else "given --redis-url",
        "full_prefill_s": full,
        "cold_s": cold.ttft_s,
        "redis_hit_s": min(redis_hit),
        "redis_hit_runs_s": redis_hit,
        "disk_hit_runs_s": disk_hit,
        "redis_hit_no_disk_s": min(redis_only),
        "disk_hit_s": min(disk_hit),
        "question_only_s": floor,
        "bytes_sent_total": sent,
        "bytes_received_per_request": received,
        "bytes_per_document": per_document,
        "mean_bytes_per_document": sum(d["bytes"] for d in per_document) / max(len(per_document), 1),
        "server_memory": server_memory,
        "same_answer": cold.text == from_redis.text,
        "answer": cold.text,
        "runs": args.runs,
        "threads": torch.get_num_threads(),
        "method": "each hit figure is the best of --runs fresh engines with an empty RAM tier in one process, "
                  "the three kinds interleaved: redis_hit_s reads Redis and copies the entries to an empty disk "
                  "folder in the background, "
                  "redis_hit_no_disk_s reads Redis only, disk_hit_s reads the disk folder the cold run wrote",
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser)
    parser.add_argument("--redis-url", default=None,
                        help="an existing server (a fresh namespace is used and removed); default: start a "
                        "throwaway redis-server on loopback")
    parser.add_argument("--maxmemory", type=int, default=1 << 30,
                        help="maxmemory of the throwaway server, bytes (default 1 GiB)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beacon_rag.bench.redis_bench")
    add_arguments(parser)
    args = parser.parse_args(argv)
    print(json.dumps(run(args), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
