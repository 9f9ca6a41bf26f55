"""The shared Redis tier, against a real redis-server started on loopback for each test.

No fake server: the fixtures run Debian's ``redis-server`` (no persistence, own temp dir, free
port) and kill it with SIGKILL where a test needs an outage.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

redis = pytest.importorskip("redis", reason="pip install 'beacon-rag[redis]' to test the Redis tier")

from beacon_rag.bench.redis_bench import LocalRedisServer, free_port, redis_server_binary
from beacon_rag.store import DiskTier, Entry, MemoryTier, RedisTier, TieredStore, decode_entry, encode_entry
from beacon_rag.store.redis_tier import redact_url, redis_tier_from_settings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(redis_server_binary() is None,
                                reason="redis-server is not installed (apt-get install redis-server)")


@pytest.fixture
def server():
    with LocalRedisServer(maxmemory=64 * 2**20) as running:
        yield running


@pytest.fixture
def raw(server):
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


def entry(seed: int = 0, floats: int = 256, **meta) -> Entry:
    g = torch.Generator().manual_seed(seed)
    return Entry({"k": torch.randn(2, floats, generator=g), "v": torch.randn(2, floats, generator=g)},
                 {"identity": {"model": "m", "seed": seed}, **meta})


def same(a: Entry, b: Entry) -> bool:
    return a.meta == b.meta and a.tensors.keys() == b.tensors.keys() and all(
        torch.equal(a.tensors[n], b.tensors[n]) for n in a.tensors)


def tier(server, namespace: str = "t", **kwargs) -> RedisTier:
    kwargs.setdefault("retry_initial", 0.2)
    kwargs.setdefault("retry_max", 0.4)
    return RedisTier(server.url, namespace=namespace, **kwargs)


# ------------------------------------------------------------------------------ the tier itself
def test_round_trip_is_the_disk_format_and_namespaced(server, raw):
    a, b = tier(server, "deploy-a"), tier(server, "deploy-b")
    e = entry(1)
    sent = a.put("k1", e)
    stored = raw.get("deploy-a:kv:k1")
    assert sent == len(stored)
    assert same(decode_entry("k1", stored), e)  # the disk tier's format, verified by the same codec
    assert same(a.get("k1", expect={"identity": e.meta["identity"]}), e)
    assert b.get("k1") is None and "k1" not in b  # another deployment does not see it
    assert raw.ttl("deploy-a:kv:k1") == -1  # no TTL unless asked
    assert a.stats()["hits"] == 1 and a.stats()["bytes_sent"] == sent
    b.put("k1", entry(2))
    assert a.clear() == 1  # clears its own namespace only
    assert a.get("k1") is None and same(b.get("k1"), entry(2))


def test_ttl_is_set_on_write_and_renewed_on_hit(server, raw):
    t = tier(server, ttl=0.5)
    t.put("k", entry())
    assert 0 < raw.pttl("t:kv:k") <= 500
    time.sleep(0.3)
    before = raw.pttl("t:kv:k")
    assert t.get("k") is not None
    assert raw.pttl("t:kv:k") > before  # a hit renews the TTL: hot entries stay
    time.sleep(0.7)
    assert t.get("k") is None  # nobody read it for longer than the TTL: gone


def test_server_maxmemory_evicts_and_a_full_server_only_skips_writes(server, raw, caplog):
    raw.config_set("maxmemory", 3 * 2**20)
    raw.config_set("maxmemory-policy", "allkeys-lru")
    t = tier(server)
    blobs = [t.put(f"k{i}", entry(i, floats=32 * 1024)) for i in range(24)]  # ~512 KiB each, 12 MiB total
    assert all(size > 500_000 for size in blobs)  # every write was accepted...
    assert int(raw.info("memory")["used_memory"]) <= 3 * 2**20 * 1.05  # ...within the server's limit
    assert t.get("k0") is None  # the oldest were evicted
    assert t.get("k23") is not None

    raw.config_set("maxmemory-policy", "noeviction")
    caplog.set_level(logging.WARNING, logger="beacon_rag.store.redis_tier")
    for i in range(24, 40):
        t.put(f"k{i}", entry(i, floats=32 * 1024))  # refused with OOM: logged, never raised
    stats = t.stats()
    assert stats["write_refused"] > 0 and stats["available"]  # a refused write is not an outage
    assert sum("OutOfMemoryError" in r.getMessage() for r in caplog.records) == 1  # one warning, not one per write
    assert t.get("k23") is not None


def test_corrupted_values_are_misses_then_recomputed_and_replaced(server, raw, tmp_path, caplog):
    good = entry(7)
    blob = encode_entry("k", good)
    marker = tmp_path / "pwned"

    class Exploit:  # unpickling this would create the marker file
        def __reduce__(self):
            return (open, (str(marker), "w"))

    damaged = {
        "flipped byte": blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:],
        "truncated": blob[: len(blob) // 2],
        "garbage": b"\x00not a safetensors blob at all",
        "empty": b"",
        "other key's blob": encode_entry("other", good),
        "pickle": pickle.dumps(Exploit()),
    }
    caplog.set_level(logging.WARNING, logger="beacon_rag.store.redis_tier")
    for label, bad in damaged.items():
        raw.set("t:kv:k", bad)
        store = TieredStore(MemoryTier(1 << 20), DiskTier(tmp_path / label), remote=tier(server))
        assert store.get("k") is None, label
        assert raw.exists("t:kv:k") == 0, label  # the bad value was deleted
        assert store.remote.stats()["corrupt"] == 1, label
        calls = []
        got, source = store.get_or_compute("k", lambda calls=calls: calls.append(1) or good)
        assert source == "computed" and len(calls) == 1 and same(got, good), label
        assert same(decode_entry("k", raw.get("t:kv:k")), good), label  # replaced by a good value
        store.close()
    assert not marker.exists()  # nothing was unpickled
    assert sum("dropping entry k" in r.getMessage() for r in caplog.records) == len(damaged)

    # A valid entry of another model/compressor under the same key fails `expect`: also a miss.
    t = tier(server)
    t.put("k", entry(8))
    assert t.get("k", expect={"identity": good.meta["identity"]}) is None
    assert raw.exists("t:kv:k") == 0


# ------------------------------------------------------------------------------ inside the store
@pytest.mark.parametrize("background", [True, False])
def test_read_through_and_write_back(server, tmp_path, background):
    a = TieredStore(MemoryTier(1 << 20), DiskTier(tmp_path / "a"), remote=tier(server))
    e = entry(3)
    assert a.get_or_compute("k", lambda: e)[1] == "computed"
    assert "k" in a.remote and a.stats()["remote_write_backs"] == 1  # write-back

    b = TieredStore(MemoryTier(1 << 20), DiskTier(tmp_path / "b"), remote=tier(server),
                    background_write_back=background)
    got, source = b.get_or_compute("k", lambda: pytest.fail("must not recompute"))
    assert source == "redis" and same(got, e)
    b.flush()  # the disk copy is written by a background thread
    assert "k" in b.memory and b.disk.get("k") is not None  # read-through into RAM and disk
    assert b.get("k")[1] == "memory"
    c = TieredStore(MemoryTier(1 << 20), DiskTier(tmp_path / "b"), remote=tier(server))
    assert c.get("k")[1] == "disk"  # the local copy now serves without the network
    assert c.remote.stats()["bytes_received"] == 0


def test_redis_lease_elects_one_computation_across_stores_without_a_shared_disk(server, tmp_path):
    calls = Counter()
    start = threading.Barrier(4)

    def compute():
        calls["k"] += 1
        time.sleep(0.3)  # long enough that the others arrive while it runs
        return entry(4)

    results = {}

    def worker(i):
        store = TieredStore(MemoryTier(1 << 20), DiskTier(tmp_path / f"d{i}"), remote=tier(server),
                            poll_interval=0.02, max_poll_interval=0.05)
        start.wait()
        results[i] = store.get_or_compute("k", compute)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert calls["k"] == 1
    assert sorted(source for _, source in results.values()) == ["computed", "redis", "redis", "redis"]
    assert all(same(e, entry(4)) for e, _ in results.values())


def test_a_dead_server_degrades_to_local_tiers_warns_once_and_reconnects(server, raw, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="beacon_rag.store.redis_tier")
    store = TieredStore(MemoryTier(1 << 20), DiskTier(tmp_path / "d"), remote=tier(server, retry_initial=3.0, retry_max=3.0))
    store.put("before", entry(1))
    server.kill()
    for i in range(5):  # computing, reading, writing: nothing raises
        got, source = store.get_or_compute(f"k{i}", lambda i=i: entry(10 + i))
        assert source == "computed" and same(got, entry(10 + i))
    assert store.get("before")[1] == "memory"
    stats = store.remote.stats()
    assert not stats["available"] and stats["outages"] == 1 and stats["skipped_down"] > 0
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1  # warn once per outage
    errors = stats["errors"]
    store.get_or_compute("k-skip", lambda: entry(20))
    assert store.remote.stats()["errors"] == errors  # in back-off the server is not even tried

    server.start()  # same port, empty (no persistence)
    deadline = time.monotonic() + 10
    while not store.remote.available and time.monotonic() < deadline:
        time.sleep(0.05)
    store.put("after", entry(2))
    assert raw.exists("t:kv:after") == 1
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_engine_builds_from_arguments_and_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("BEACON_RAG_REDIS_URL", server.url)
    monkeypatch.setenv("BEACON_RAG_REDIS_NAMESPACE", "prod-7")
    monkeypatch.setenv("BEACON_RAG_REDIS_TTL", "3600")
    t = redis_tier_from_settings(None)
    assert (t.url, t.namespace, t.ttl) == (server.url, "prod-7", 3600.0)
    assert redis_tier_from_settings("") is None  # explicit "" turns it off despite the environment
    t = redis_tier_from_settings("redis://127.0.0.1:1/0", namespace="x", ttl=5)
    assert (t.namespace, t.ttl) == ("x", 5.0)
    monkeypatch.setenv("BEACON_RAG_REDIS_TTL", "soon")
    with pytest.raises(ValueError, match="BEACON_RAG_REDIS_TTL"):
        redis_tier_from_settings(None)
    with pytest.raises(ValueError, match="redis://"):
        RedisTier("http://localhost:6379")
    with pytest.raises(ValueError, match="namespace"):
        RedisTier(server.url, namespace="has space")
    with pytest.raises(ValueError, match="ttl"):
        RedisTier(server.url, ttl=0)
    assert "hunter2" not in redact_url("redis://user:hunter2@host:6379/0")
    assert "hunter2" not in json.dumps(RedisTier("redis://:hunter2@127.0.0.1:1/0").stats())


def test_engine_answers_with_no_server_listening(tmp_path):
    from beacon_rag import Engine, rag_messages
    from tests.helpers.worker import CORPUS, tokenizer

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_model

    lm = tiny_model("llama", tokenizer(), seed=0)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    engine = Engine(lm, cache_dir=tmp_path / "kv", redis_url=dead)
    first = engine.generate(rag_messages("Which crate?", CORPUS[:2]), max_new_tokens=4)
    again = engine.generate(rag_messages("Which crate?", CORPUS[:2]), max_new_tokens=4)
    assert first.token_ids == again.token_ids
    assert {u.source for u in again.segments} == {"memory"}
    assert engine.store.stats()["redis"]["outages"] == 1


# ------------------------------------------------------------------------------ separate processes
def start_worker(cache_dir: Path, url: str, namespace: str, seed: int, count: int, step: bool = False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if step:
        env["REDIS_WORKER_STEP"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.redis_worker", str(cache_dir), url, namespace, str(seed), str(count)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(worker) -> tuple[list[dict], dict, str]:
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    rows = [r for r in lines if "query" in r]
    stats = next(r["stats"] for r in lines if "stats" in r)
    return rows, stats, err


def test_worker_a_compresses_worker_b_in_another_process_hits_redis(server, tmp_path):
    count = 8
    rows_a, stats_a, _ = finish(start_worker(tmp_path / "a", server.url, "mp", seed=1, count=count))
    assert stats_a["redis"]["writes"] > 0
    rows_b, stats_b, _ = finish(start_worker(tmp_path / "b", server.url, "mp", seed=1, count=count))
    assert len(rows_a) == len(rows_b) == count
    sources_b = Counter(s for r in rows_b for s in r["sources"].values())
    assert sources_b["computed"] == 0 and sources_b["redis"] > 0 and stats_b["computed"] == 0
    assert set(sources_b) <= {"redis", "memory", "disk"}  # disk: its own read-through copies
    # Every segment A compressed, B fetched from Redis exactly once (then from its own RAM).
    computed_a = {k for r in rows_a for k, s in r["sources"].items() if s == "computed"}
    fetched_b = [k for r in rows_b for k, s in r["sources"].items() if s == "redis"]
    assert sorted(fetched_b) == sorted(computed_a)
    assert [r["tokens"] for r in rows_b] == [r["tokens"] for r in rows_a]  # a hit never changes the answer
    with DiskTier(tmp_path / "b") as disk_b:  # B's background disk copies finished before it exited
        assert all(disk_b.get(key) is not None for key in fetched_b)


def test_a_server_killed_mid_run_does_not_fail_queries(server, tmp_path):
    count = 10
    reference, _, _ = finish(start_worker(tmp_path / "ref", server.url, "ref", seed=5, count=count))
    worker = start_worker(tmp_path / "w", server.url, "run", seed=5, count=count, step=True)
    rows = []
    assert json.loads(worker.stdout.readline()) == {"ready": True}
    for index in range(count):
        if index == 4:
            server.kill()  # SIGKILL mid-run: connections drop, nothing answers on the port
        worker.stdin.write("\n")
        worker.stdin.flush()
        rows.append(json.loads(worker.stdout.readline()))
    _, stats, err = finish(worker)  # closes stdin, collects the stats line
    assert [r["tokens"] for r in rows] == [r["tokens"] for r in reference]
    assert stats["redis"]["outages"] == 1 and stats["redis"]["down"]  # (back-off may be over: timing-free)
    assert err.count("unreachable") == 1  # one warning for the whole outage
    assert any(s == "computed" for r in rows[4:] for s in r["sources"].values())


def test_concurrent_workers_with_separate_disks_compress_each_segment_once(server, tmp_path):
    """Only Redis connects them (no shared folder), as on two machines: its lease elects one compressor."""
    workers = [start_worker(tmp_path / f"m{i}", server.url, "race", seed=3, count=6) for i in range(2)]
    results = [finish(w) for w in workers]
    computed = Counter(k for rows, _, _ in results for r in rows for k, s in r["sources"].items() if s == "computed")
    assert computed and max(computed.values()) == 1  # every segment compressed exactly once in total
    fetched = Counter(k for rows, _, _ in results for r in rows for k, s in r["sources"].items() if s == "redis")
    assert set(fetched) == set(computed)  # ...and fetched by the other worker
    assert results[0][0] and [r["tokens"] for r in results[0][0]] == [r["tokens"] for r in results[1][0]]
