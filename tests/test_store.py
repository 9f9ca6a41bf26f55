"""Tests for beacon_rag.store: codec, memory tier, disk tier, tiered store.

Everything runs against real tensors and a real diskcache directory under
pytest's tmp_path; nothing is mocked. Corruption and hostile payloads are
produced by actually editing bytes / SQLite rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import pickle
import random
import resource
import signal
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path

import diskcache
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beacon_rag.store import (
    FORMAT_VERSION,
    LEASE_PREFIX,
    CorruptEntry,
    DiskTier,
    Entry,
    MemoryTier,
    TieredStore,
    decode_entry,
    encode_entry,
)

KEY = hashlib.sha256(b"segment-a").hexdigest()
OTHER_KEY = hashlib.sha256(b"segment-b").hexdigest()


def key_of(i: int) -> str:
    return hashlib.sha256(f"seg-{i}".encode()).hexdigest()


def make_entry(seed: int = 0, n: int = 64, dtype: torch.dtype = torch.float32, **meta: object) -> Entry:
    """A small KV-like entry: k/v of shape (2, n//2) plus positions."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(2, n // 2, generator=g).to(dtype)
    v = torch.randn(2, n // 2, generator=g).to(dtype)
    pos = torch.arange(n // 2, dtype=torch.int64)
    base_meta = {"model": "tiny-llm@abc123", "compressor": "exact", "dtype": str(dtype), "shape": [2, n // 2]}
    base_meta.update(meta)
    return Entry(tensors={"k": k, "v": v, "pos": pos}, meta=base_meta)


def sized_entry(nbytes: int, seed: int = 0) -> Entry:
    """An entry whose tensor payload is exactly ``nbytes`` (uint8)."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g)
    return Entry(tensors={"x": data}, meta={"seed": seed})


def assert_same(a: Entry, b: Entry) -> None:
    assert set(a.tensors) == set(b.tensors)
    for name in a.tensors:
        assert a.tensors[name].dtype == b.tensors[name].dtype, name
        assert a.tensors[name].shape == b.tensors[name].shape, name
        assert torch.equal(a.tensors[name], b.tensors[name]), name


class _Plant:
    """Unpickling this calls ``open(path, "w")``, i.e. creates a marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def planted_pickle(marker: Path, pad: int = 0) -> bytes:
    payload: object = _Plant(str(marker))
    if pad:
        payload = [payload, b"\0" * pad]
    return pickle.dumps(payload)


def test_planted_pickle_is_live(tmp_path: Path) -> None:
    """Control: the hostile payload really does create its marker when unpickled."""
    marker = tmp_path / "control"
    pickle.loads(planted_pickle(marker))
    assert marker.exists()


# --------------------------------------------------------------------------- codec


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.bool, torch.float64]
)
def test_round_trip_dtypes(dtype: torch.dtype) -> None:
    entry = make_entry(1, dtype=dtype)
    entry.tensors["scalar"] = torch.tensor(3, dtype=torch.int64)
    entry.tensors["empty"] = torch.empty(0, 4, dtype=dtype)
    blob = encode_entry(KEY, entry)
    out = decode_entry(KEY, blob)
    assert_same(entry, out)
    assert out.meta == entry.meta
    assert out.nbytes == entry.nbytes


def test_round_trip_normalises_views_and_shared_storage() -> None:
    kv = torch.randn(2, 4, 8)
    entry = Entry(tensors={"k": kv[0], "v": kv[1], "kT": kv[0].t()}, meta={"a": 1})
    out = decode_entry(KEY, encode_entry(KEY, entry))
    assert torch.equal(out.tensors["k"], kv[0])
    assert torch.equal(out.tensors["v"], kv[1])
    assert torch.equal(out.tensors["kT"], kv[0].t())


def test_meta_round_trip_and_expect() -> None:
    entry = make_entry(2, extra={"nested": [1, 2, {"x": None}]}, tup=(1, 2))
    blob = encode_entry(KEY, entry)
    out = decode_entry(KEY, blob, expect={"model": "tiny-llm@abc123", "tup": (1, 2), "extra": {"nested": [1, 2, {"x": None}]}})
    assert out.meta["tup"] == [1, 2]  # JSON has no tuples
    with pytest.raises(CorruptEntry, match="model"):
        decode_entry(KEY, blob, expect={"model": "other-llm"})
    with pytest.raises(CorruptEntry, match="lacks"):
        decode_entry(KEY, blob, expect={"missing": 1})
    with pytest.raises(CorruptEntry, match="dtype"):
        decode_entry(KEY, blob, expect={"dtype": "torch.float16"})
    with pytest.raises(CorruptEntry, match="shape"):
        decode_entry(KEY, blob, expect={"shape": [2, 33]})
    # A non-JSON expectation is a caller bug, not corruption.
    with pytest.raises(ValueError):
        decode_entry(KEY, blob, expect={"model": object()})


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_entry(KEY, Entry(tensors={"a": torch.zeros(1)}, meta={"x": float("nan")}))
    with pytest.raises(ValueError):
        encode_entry(KEY, Entry(tensors={"a": torch.zeros(1)}, meta={"x": object()}))
    with pytest.raises(ValueError):
        encode_entry(KEY, Entry(tensors={"__metadata__": torch.zeros(1)}, meta={}))
    with pytest.raises(TypeError):
        encode_entry(KEY, Entry(tensors={"a": [1, 2]}, meta={}))  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        encode_entry("", make_entry())


def test_key_mismatch_detected() -> None:
    blob = encode_entry(KEY, make_entry())
    with pytest.raises(CorruptEntry, match="key"):
        decode_entry(OTHER_KEY, blob)


def _resave(blob: bytes, *, tensors: dict[str, torch.Tensor] | None = None, **md_changes: str) -> bytes:
    """Rewrite a valid blob with altered tensors and/or metadata fields."""
    header_len = int.from_bytes(blob[:8], "little")
    md = json.loads(blob[8 : 8 + header_len])["__metadata__"]
    md.update(md_changes)
    return safetensors.torch.save(tensors if tensors is not None else safetensors.torch.load(blob), metadata=md)


def test_format_version_checksum_and_format_mismatch() -> None:
    entry = make_entry(3)
    blob = encode_entry(KEY, entry)
    assert FORMAT_VERSION == 1
    with pytest.raises(CorruptEntry, match="format_version"):
        decode_entry(KEY, _resave(blob, format_version="2"))
    with pytest.raises(CorruptEntry, match="format"):
        decode_entry(KEY, _resave(blob, format="something-else"))
    with pytest.raises(CorruptEntry, match="checksum"):
        decode_entry(KEY, _resave(blob, checksum="0" * 64))
    tampered = dict(entry.tensors)
    tampered["k"] = tampered["k"].clone()
    tampered["k"][0, 0] += 1
    with pytest.raises(CorruptEntry, match="checksum"):
        decode_entry(KEY, _resave(blob, tensors=tampered))
    # Same bytes under another name is also a different payload.
    renamed = {("kk" if n == "k" else n): t for n, t in entry.tensors.items()}
    with pytest.raises(CorruptEntry, match="checksum"):
        decode_entry(KEY, _resave(blob, tensors=renamed))
    # A plain safetensors file without our metadata.
    with pytest.raises(CorruptEntry, match="metadata"):
        decode_entry(KEY, safetensors.torch.save(entry.tensors))


def test_every_single_byte_flip_is_detected() -> None:
    entry = Entry(
        tensors={"k": torch.randn(2, 3).bfloat16(), "pos": torch.arange(3)}, meta={"model": "m"}
    )
    blob = encode_entry(KEY, entry)
    for pos in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[pos] ^= mask
            with pytest.raises(CorruptEntry):
                decode_entry(KEY, bytes(bad))


def test_flips_inside_large_tensor_data_detected() -> None:
    entry = make_entry(4, n=4096, dtype=torch.bfloat16)
    blob = encode_entry(KEY, entry)
    header_end = 8 + int.from_bytes(blob[:8], "little")
    rng = random.Random(0)
    positions = [header_end, header_end + 1, len(blob) - 1, len(blob) // 2] + [
        rng.randrange(header_end, len(blob)) for _ in range(20)
    ]
    for pos in positions:
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        with pytest.raises(CorruptEntry, match="checksum"):
            decode_entry(KEY, bytes(bad))


def test_truncation_and_extension_detected() -> None:
    blob = encode_entry(KEY, make_entry(5, n=16))
    for cut in range(len(blob)):
        with pytest.raises(CorruptEntry):
            decode_entry(KEY, blob[:cut])
    with pytest.raises(CorruptEntry):
        decode_entry(KEY, blob + b"\0")


def test_garbage_is_corrupt_never_other_errors(tmp_path: Path) -> None:
    rng = random.Random(1234)
    samples: list[object] = [b"", b"\0", b"\xff" * 8, b"\xff" * 64, b"{}", b"not safetensors at all"]
    samples += [rng.randbytes(rng.randrange(1, 2000)) for _ in range(200)]
    # Valid length prefix, hostile headers.
    for header in (b"[]", b"{", b'{"__metadata__": 5}', b'{"__metadata__": {"format": 1}}', b"\xff\xfe"):
        samples.append(len(header).to_bytes(8, "little") + header)
    samples.append((2**63).to_bytes(8, "little") + b"{}")
    marker = tmp_path / "pwned"
    samples.append(planted_pickle(marker))
    buf = io.BytesIO()
    torch.save({"x": _Plant(str(marker))}, buf)  # a torch.save zip with a pickle inside
    samples.append(buf.getvalue())
    samples.append("a str, not bytes")
    samples.append(None)
    for blob in samples:
        with pytest.raises(CorruptEntry):
            decode_entry(KEY, blob)  # type: ignore[arg-type]
    assert not marker.exists()


# --------------------------------------------------------------------------- memory tier


def test_memory_lru_order_and_budget() -> None:
    tier = MemoryTier(300)
    for i in range(3):
        tier.put(key_of(i), sized_entry(100, i))
    assert tier.keys_lru() == [key_of(0), key_of(1), key_of(2)]
    assert tier.get(key_of(0)) is not None  # 0 becomes most recent
    tier.put(key_of(3), sized_entry(100, 3))  # evicts 1, the LRU
    assert key_of(1) not in tier
    assert tier.keys_lru() == [key_of(2), key_of(0), key_of(3)]
    tier.put(key_of(4), sized_entry(200, 4))  # evicts 2 and 0
    assert tier.keys_lru() == [key_of(3), key_of(4)]
    s = tier.stats()
    assert s["bytes"] == 300 and s["entries"] == 2 and s["evictions"] == 3
    assert s["hits"] == 1 and s["max_bytes"] == 300
    assert tier.get(key_of(1)) is None and tier.stats()["misses"] == 1


def test_memory_oversize_zero_budget_and_replace() -> None:
    with pytest.raises(ValueError):
        MemoryTier(-1)
    zero = MemoryTier(0)
    zero.put(KEY, sized_entry(1))
    zero.put(OTHER_KEY, Entry(tensors={}, meta={}))
    assert len(zero) == 0 and zero.get(KEY) is None

    tier = MemoryTier(100)
    tier.put(KEY, sized_entry(50))
    tier.put(OTHER_KEY, sized_entry(50))
    tier.put(key_of(9), sized_entry(101))  # larger than the whole budget: not stored, nothing evicted
    assert key_of(9) not in tier and len(tier) == 2
    tier.put(KEY, sized_entry(80, seed=7))  # replacement re-charges the budget
    assert tier.stats()["bytes"] == 80 and OTHER_KEY not in tier
    tier.put(KEY, sized_entry(500))  # oversize replacement drops the stale value
    assert KEY not in tier and tier.stats()["bytes"] == 0
    tier.put(KEY, sized_entry(10))
    assert tier.delete(KEY) and not tier.delete(KEY)
    tier.put(KEY, sized_entry(10))
    tier.clear()
    assert len(tier) == 0 and tier.stats()["bytes"] == 0


_ops = st.lists(
    st.tuples(st.sampled_from(["put", "get", "delete"]), st.integers(0, 7), st.integers(0, 120)),
    max_size=60,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.integers(0, 300), ops=_ops)
def test_memory_matches_reference_lru(budget: int, ops: list[tuple[str, int, int]]) -> None:
    tier = MemoryTier(budget)
    ref: OrderedDict[str, int] = OrderedDict()  # key -> size, oldest first
    for op, k, size in ops:
        key = key_of(k)
        if op == "put":
            ref.pop(key, None)
            if 0 < budget and size <= budget:
                while ref and sum(ref.values()) + size > budget:
                    ref.popitem(last=False)
                ref[key] = size
            tier.put(key, sized_entry(size, k))
        elif op == "get":
            got = tier.get(key)
            assert (got is not None) == (key in ref)
            if got is not None:
                assert got.nbytes == ref[key]
                ref.move_to_end(key)
        else:
            assert tier.delete(key) == (key in ref)
            ref.pop(key, None)
        assert tier.keys_lru() == list(ref)
        assert tier.stats()["bytes"] == sum(ref.values()) <= budget


def test_memory_thread_safety() -> None:
    tier = MemoryTier(2000)
    entries = [sized_entry(50 + 10 * i, i) for i in range(20)]

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(2000):
            i = rng.randrange(20)
            if rng.random() < 0.5:
                tier.put(key_of(i), entries[i])
            else:
                tier.get(key_of(i))

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = tier.stats()
    assert s["bytes"] <= 2000
    assert s["bytes"] == sum(entries[int(i)].nbytes for i in [_idx(k) for k in tier.keys_lru()])


def _idx(key: str) -> int:
    return next(i for i in range(20) if key_of(i) == key)


# --------------------------------------------------------------------------- disk tier


def test_disk_round_trip_and_reopen(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    small, large = make_entry(6, n=16), make_entry(7, n=40_000, dtype=torch.bfloat16)  # row vs value file
    tier = DiskTier(d, max_bytes=50 * 2**20)
    tier.put(KEY, small)
    tier.put(OTHER_KEY, large)
    assert KEY in tier and len(tier) == 2
    tier.close()

    reopened = DiskTier(d, max_bytes=50 * 2**20)
    got_small, got_large = reopened.get(KEY), reopened.get(OTHER_KEY, expect={"model": "tiny-llm@abc123"})
    assert got_small is not None and got_large is not None
    assert_same(small, got_small)
    assert_same(large, got_large)
    assert reopened.get(key_of(99)) is None
    s = reopened.stats()
    assert s["hits"] == 2 and s["misses"] == 1 and s["corrupt"] == 0
    assert s["entries"] == 2 and s["bytes"] > large.nbytes and s["directory"] == str(d)
    assert reopened.delete(KEY) and not reopened.delete(KEY)
    reopened.clear()
    assert len(reopened) == 0
    reopened.close()


def _value_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.val"))


def test_disk_corrupt_file_is_miss_deleted_and_warned_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "cache"
    tier = DiskTier(d)
    entry = make_entry(8, n=40_000)
    key = key_of(1001)  # "once per key per process": use a key no other test reports
    for _ in range(2):
        tier.put(key, entry)
        (val,) = _value_files(d)
        data = bytearray(val.read_bytes())
        data[len(data) // 2] ^= 0x40
        val.write_bytes(bytes(data))
        with caplog.at_level(logging.DEBUG, logger="beacon_rag.store.disk"):
            assert tier.get(key) is None
        assert key not in tier and _value_files(d) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and key in r.getMessage()]
    assert len(warnings) == 1 and "checksum" in warnings[0].getMessage()
    assert tier.stats()["corrupt"] == 2


def test_disk_expect_mismatch_is_miss_and_deleted(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "cache")
    tier.put(KEY, make_entry(9))
    assert tier.get(KEY, expect={"model": "another-model"}) is None
    assert KEY not in tier and tier.stats()["corrupt"] == 1


def test_disk_entry_renamed_onto_other_key(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    tier = DiskTier(d)
    tier.put(KEY, make_entry(10))
    blob = encode_entry(KEY, make_entry(10))
    raw = diskcache.Cache(str(d))  # default Disk: writes bytes rows just like SafeDisk
    raw.set(OTHER_KEY, blob)
    raw.close()
    assert tier.get(OTHER_KEY) is None and OTHER_KEY not in tier
    assert tier.get(KEY) is not None


def test_disk_planted_pickle_rows_are_never_unpickled(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    tier = DiskTier(d)
    tier.put(KEY, make_entry(11))
    marker_row, marker_file, marker_text = tmp_path / "pwned-row", tmp_path / "pwned-file", tmp_path / "pwned-3"

    # 1. Straight into the SQLite row: key exists, mode 4 (MODE_PICKLE), value = hostile pickle.
    con = sqlite3.connect(str(d / "cache.db"))
    with con:
        n = con.execute(
            "UPDATE Cache SET mode = 4, value = ?, filename = NULL WHERE key = ? AND raw = 1",
            (planted_pickle(marker_row), KEY),
        ).rowcount
        assert n == 1
        now = time.time()
        con.execute(
            "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
            " filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, 4, NULL, ?)",
            (OTHER_KEY, now, now, planted_pickle(marker_row)),
        )
    con.close()

    # 2. Through diskcache's own pickling Disk, large enough to land in a value file.
    plain = diskcache.Cache(str(d))
    plain.set(key_of(1), [_Plant(str(marker_file)), b"\0" * 100_000])
    plain.set(key_of(2), 12345)  # a raw int row: not ours either
    plain.set(key_of(3), "x" * 100_000)  # a text file row
    plain.close()

    for key in (KEY, OTHER_KEY, key_of(1), key_of(2), key_of(3)):
        assert tier.get(key) is None, key
        assert key not in tier, key
    for marker in (marker_row, marker_file, marker_text):
        assert not marker.exists()
    assert tier.stats()["corrupt"] == 5
    assert _value_files(d) == []
    # The directory is still fully usable afterwards.
    tier.put(KEY, make_entry(11))
    assert tier.get(KEY) is not None

    # Control: diskcache's default Disk really would have run the payload.
    control_marker = tmp_path / "control"
    plain = diskcache.Cache(str(tmp_path / "control-cache"))
    plain.set(KEY, _Plant(str(control_marker)))
    plain.get(KEY)
    plain.close()
    assert control_marker.exists()


def test_disk_size_limit_respected_with_lru(tmp_path: Path) -> None:
    limit = 2 * 2**20
    tier = DiskTier(tmp_path / "cache", max_bytes=limit)
    hot = key_of(-1)
    tier.put(hot, sized_entry(100_000, seed=-1 % 97))
    for i in range(50):
        tier.put(key_of(i), sized_entry(100_000, seed=i))
        assert tier.get(hot) is not None  # keep it most recently used
        assert tier.stats()["bytes"] <= limit
    assert 5 < len(tier) < 50
    assert tier.get(key_of(0)) is None  # cold entries were culled
    assert tier.get(key_of(49)) is not None
    # An entry larger than the whole limit is not stored at all.
    tier.put(KEY, sized_entry(limit + 1))
    assert KEY not in tier


def test_disk_put_failure_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A real write failure (file size rlimit -> EFBIG, like a full disk)."""
    d = tmp_path / "cache"
    tier = DiskTier(d)
    tier.put(KEY, make_entry(12, n=16))
    entry = sized_entry(300_000)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (128 * 1024, hard))
        with caplog.at_level(logging.WARNING, logger="beacon_rag.store.disk"):
            tier.put(OTHER_KEY, entry)  # must not raise
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert any("could not store" in r.getMessage() for r in caplog.records)
    assert OTHER_KEY not in tier
    assert _value_files(d) == []  # the partial value file was cleaned up
    tier.put(OTHER_KEY, entry)
    got = tier.get(OTHER_KEY)
    assert got is not None and torch.equal(got.tensors["x"], entry.tensors["x"])
    assert tier.get(KEY) is not None


# --------------------------------------------------------------------------- tiered store


def test_tiered_get_put_promote_and_expect(tmp_path: Path) -> None:
    mem = MemoryTier(10 * 2**20)
    store = TieredStore(mem, DiskTier(tmp_path / "cache"))
    entry = make_entry(13)
    assert store.get(KEY) is None
    store.put(KEY, entry)
    assert KEY in mem and KEY in store.disk  # type: ignore[operator]
    got = store.get(KEY)
    assert got is not None and got[1] == "memory"
    mem.clear()
    got = store.get(KEY, expect={"compressor": "exact"})
    assert got is not None and got[1] == "disk" and KEY in mem  # promoted
    assert store.get(KEY)[1] == "memory"  # type: ignore[index]
    # A mismatching expectation is a miss in both tiers.
    assert store.get(KEY, expect={"compressor": "quantized"}) is None
    assert KEY not in mem
    store.clear()
    s = store.stats()
    assert s["memory"]["entries"] == 0 and s["disk"]["entries"] == 0
    assert TieredStore(None, None).get(KEY) is None


def _run_threads(n: int, target) -> list:
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target()
        except BaseException as exc:  # noqa: BLE001 - collected for assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.mark.parametrize("tiers", ["memory", "disk", "both"])
def test_single_flight_threads(tmp_path: Path, tiers: str) -> None:
    mem = MemoryTier(2**20) if tiers in ("memory", "both") else None
    disk = DiskTier(tmp_path / "cache") if tiers in ("disk", "both") else None
    store = TieredStore(mem, disk)
    calls = []
    lock = threading.Lock()

    def compute() -> Entry:
        with lock:
            calls.append(1)
        time.sleep(0.3)
        return make_entry(14)

    results = _run_threads(8, lambda: store.get_or_compute(KEY, compute))
    assert len(calls) == 1
    for res in results:
        assert isinstance(res, tuple), res
        assert_same(res[0], make_entry(14))
    assert sum(1 for _, src in results if src == "computed") >= 1
    s = store.stats()
    assert s["computed"] == 1 and s["in_flight"] == 0
    assert s["single_flight_waits"] + sum(1 for _, src in results if src != "computed") >= 7
    assert store.get_or_compute(KEY, compute)[1] in ("memory", "disk")
    assert len(calls) == 1
    if disk is not None:
        assert LEASE_PREFIX + KEY not in disk


def test_compute_error_propagates_to_all_waiters_then_recovers(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path / "cache")
    store = TieredStore(MemoryTier(2**20), disk)
    calls = []

    def failing() -> Entry:
        calls.append(1)
        time.sleep(0.3)
        raise RuntimeError("model exploded")

    results = _run_threads(4, lambda: store.get_or_compute(KEY, failing))
    assert len(calls) == 1
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results), results
    assert LEASE_PREFIX + KEY not in disk  # lease released
    assert store.stats()["in_flight"] == 0
    entry, source = store.get_or_compute(KEY, lambda: make_entry(15))
    assert source == "computed"
    assert_same(entry, make_entry(15))
    with pytest.raises(TypeError):
        store.get_or_compute(OTHER_KEY, lambda: "not an entry")  # type: ignore[arg-type, return-value]


def test_stale_lease_from_dead_process_expires(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path / "cache")
    assert disk.try_acquire_lease(LEASE_PREFIX + KEY, b"dead-process", ttl=0.6)
    assert not disk.try_acquire_lease(LEASE_PREFIX + KEY, b"someone-else", ttl=0.6)
    store = TieredStore(MemoryTier(2**20), disk, poll_interval=0.02, max_poll_interval=0.1)
    t0 = time.monotonic()
    _entry, source = store.get_or_compute(KEY, lambda: make_entry(16))
    waited = time.monotonic() - t0
    assert source == "computed" and 0.4 < waited < 5
    assert store.stats()["lease_waits"] == 1
    assert LEASE_PREFIX + KEY not in disk


def test_release_does_not_steal_a_lease_taken_over(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path / "cache")
    name = LEASE_PREFIX + KEY
    assert disk.try_acquire_lease(name, b"first", ttl=0.2)
    time.sleep(0.3)
    assert disk.try_acquire_lease(name, b"second", ttl=30)  # first expired, taken over
    disk.release_lease(name, b"first")  # late release by the first owner
    assert name in disk
    disk.release_lease(name, b"second")
    assert name not in disk


def _mp_worker(directory: str, key: str, log_path: str, barrier, results) -> None:
    """Child process: race the other child for ``key``; compute appends a line."""

    def compute() -> Entry:
        time.sleep(1.0)
        with open(log_path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return make_entry(17)

    store = TieredStore(MemoryTier(2**20), DiskTier(directory), poll_interval=0.02)
    barrier.wait(60)
    entry, source = store.get_or_compute(key, compute)
    results.put((source, float(entry.tensors["k"].float().sum())))


def test_single_flight_across_processes(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    directory = str(tmp_path / "shared")
    DiskTier(directory).close()  # create the schema once, before the race
    log_path = tmp_path / "computed.log"
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_mp_worker, args=(directory, KEY, str(log_path), barrier, results)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait(60)
        out = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
    assert all(p.exitcode == 0 for p in procs)
    assert len(log_path.read_text().splitlines()) == 1
    assert sorted(src for src, _ in out) == ["computed", "disk"]
    expected = float(make_entry(17).tensors["k"].float().sum())
    assert all(total == expected for _, total in out)
    assert LEASE_PREFIX + KEY not in DiskTier(directory)
