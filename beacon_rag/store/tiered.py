"""Tiered store (RAM over disk over an optional shared Redis) with single-flight computation.

Computing a segment's KV cache is the expensive thing this whole package
exists to avoid, so when several requests miss on the same key at once the
work must happen once: threads of one process coordinate through an
in-memory "flight", processes sharing a disk directory through a lease row
in the disk tier, and workers on different machines through a lease key in
the shared Redis tier (when one is configured and reachable).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .codec import Entry, meta_mismatch
from .disk import DiskTier
from .memory import MemoryTier
from .redis_tier import RedisTier

logger = logging.getLogger(__name__)

LEASE_PREFIX = "inflight:"
DEFAULT_LEASE_TTL = 120.0
# Marker for "no lease tier could answer: compute without one".
_NO_LEASE = object()
# A writer thread with nothing to do for this long exits (and is restarted on demand); it is
# not a daemon, so a process exiting right after a Redis hit still finishes its disk copies.
_WRITER_IDLE_S = 0.2


@dataclass
class _Flight:
    """One in-process computation that other threads can wait on."""

    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[Entry, str] | None = None
    error: BaseException | None = None


class TieredStore:
    """Looks up memory, then disk, then the shared remote tier; writes to all; computes once on a miss.

    Any tier may be None (e.g. memory-only in tests, disk-only for a
    worker that should not hold RAM, no remote for a single machine).
    A remote hit is written back into memory and disk (read-through), and a
    computed entry is written to the remote tier too (write-back), so each
    worker fetches a shared entry over the network once.
    """

    def __init__(
        self,
        memory: MemoryTier | None,
        disk: DiskTier | None,
        *,
        remote: RedisTier | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        poll_interval: float = 0.05,
        max_poll_interval: float = 0.5,
        background_write_back: bool = True,
        write_back_queue: int = 32,
    ) -> None:
        """``lease_ttl`` bounds how long other processes wait for a computation
        whose owner died; a computation running longer than that may be
        duplicated by a waiter (wasteful, never wrong).
        ``poll_interval`` is the first sleep of a cross-process waiter, doubled
        up to ``max_poll_interval``.
        ``background_write_back`` copies Redis hits to the disk tier in a
        writer thread, so a request does not wait for a local file write (as
        slow as the network read on this project's machine: measured in
        ``beacon-rag bench redis``); at most ``write_back_queue`` entries wait,
        beyond that the copy is made in the request. :meth:`flush` waits.
        """
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be > 0")
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise ValueError("need 0 < poll_interval <= max_poll_interval")
        self.memory = memory
        self.disk = disk
        self.remote = remote
        self.lease_ttl = float(lease_ttl)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = float(max_poll_interval)
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._computed = 0
        self._waits = 0
        self._lease_waits = 0
        self._memory_stale = 0
        self._remote_write_backs = 0
        self.background_write_back = bool(background_write_back)
        self._pending: queue.Queue[tuple[str, Entry]] = queue.Queue(maxsize=max(1, write_back_queue))
        self._writer: threading.Thread | None = None

    # -- lookups ----------------------------------------------------------------------

    def get(self, key: str, expect: Mapping[str, Any] | None = None) -> tuple[Entry, str] | None:
        """Return ``(entry, "memory" | "disk" | "redis")`` or None.

        ``expect`` is checked for memory hits too (the disk and Redis tiers
        check it while decoding), so an entry from another model/compressor
        never leaks out of RAM. A disk hit is promoted into memory; a Redis
        hit into disk and memory.
        """
        if self.memory is not None:
            entry = self.memory.get(key)
            if entry is not None:
                problem = meta_mismatch(entry.meta, expect)
                if problem is None:
                    return entry, "memory"
                logger.warning("memory tier: dropping %s: %s", key, problem)
                self.memory.delete(key)
                with self._lock:
                    self._memory_stale += 1
        return self._get_disk(key, expect) or self._get_remote(key, expect)

    def _get_disk(self, key: str, expect: Mapping[str, Any] | None) -> tuple[Entry, str] | None:
        if self.disk is None:
            return None
        entry = self.disk.get(key, expect)
        if entry is None:
            return None
        if self.memory is not None:
            self.memory.put(key, entry)
        return entry, "disk"

    def _get_remote(self, key: str, expect: Mapping[str, Any] | None) -> tuple[Entry, str] | None:
        if self.remote is None:
            return None
        entry = self.remote.get(key, expect)
        if entry is None:
            return None
        # Read-through: the next request on this machine must not cross the network again.
        if self.memory is not None:
            self.memory.put(key, entry)
        if self.disk is not None:
            self._copy_to_disk(key, entry)
        return entry, "redis"

    def _copy_to_disk(self, key: str, entry: Entry) -> None:
        if not self.background_write_back:
            self.disk.put(key, entry)  # type: ignore[union-attr]
            return
        with self._lock:
            try:
                self._pending.put_nowait((key, entry))
            except queue.Full:
                queued = False
            else:
                queued = True
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_pending, name="beacon-rag-write-back")
                    self._writer.start()
        if not queued:
            self.disk.put(key, entry)  # type: ignore[union-attr]

    def _write_pending(self) -> None:
        """Writer thread: copy queued Redis hits to disk; exit when idle."""
        while True:
            try:
                key, entry = self._pending.get(timeout=_WRITER_IDLE_S)
            except queue.Empty:
                with self._lock:
                    # Re-check under the lock that enqueues, so no item is left without a writer.
                    if self._pending.empty():
                        self._writer = None
                        return
                continue
            try:
                self.disk.put(key, entry)  # type: ignore[union-attr]
            except Exception:
                logger.exception("write-back of %s to disk failed", key)
            finally:
                self._pending.task_done()

    def flush(self) -> None:
        """Wait until every queued copy of a Redis hit is on disk."""
        self._pending.join()

    def _get_below_memory(self, key: str, expect: Mapping[str, Any] | None) -> tuple[Entry, str] | None:
        """Disk, then remote: what a waiter polls while another worker computes."""
        hit = self._get_disk(key, expect) if self.disk is not None and key in self.disk else None
        return hit or self._get_remote(key, expect)

    def put(self, key: str, entry: Entry) -> None:
        """Write ``entry`` to every tier.

        Disk goes first because encoding validates the entry (JSON meta,
        tensor names): a bad entry then raises before anything is cached.
        The remote write comes last: it is the slowest, and a failure there
        is logged and skipped by the tier itself.
        """
        if self.disk is not None:
            self.disk.put(key, entry)
        if self.memory is not None:
            self.memory.put(key, entry)
        if self.remote is not None and self.remote.put(key, entry):
            with self._lock:
                self._remote_write_backs += 1

    def delete(self, key: str) -> None:
        """Remove ``key`` from every tier (an entry found to be unusable)."""
        for tier in (self.memory, self.disk, self.remote):
            if tier is not None:
                tier.delete(key)

    # -- single flight ----------------------------------------------------------------

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], Entry],
        expect: Mapping[str, Any] | None = None,
    ) -> tuple[Entry, str]:
        """Return ``(entry, source)`` with source "memory", "disk" or "computed".

        On a miss exactly one thread per process runs ``compute`` for ``key``;
        concurrent callers wait and receive the same result (with the
        leader's source, usually "computed") or the same exception. Across
        processes a lease elects one computing process, the others poll
        for its entry: a Redis lease (``SET NX PX``) when the remote tier is
        reachable, so workers on other machines wait too, else a lease row
        in the shared disk directory.
        """
        hit = self.get(key, expect)
        if hit is not None:
            return hit

        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
            else:
                self._waits += 1
        assert flight is not None

        if not leader:
            logger.debug("single-flight: waiting for in-process computation of %s", key)
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.result is not None
            entry, _source = flight.result
            if meta_mismatch(entry.meta, expect) is None:
                return flight.result
            # The leader asked with a different expectation for the same key
            # (a key-derivation bug upstream); do not hand out its entry.
            logger.warning("single-flight: result for %s does not match this caller's expect", key)
            return self._compute_and_put(key, compute), "computed"

        try:
            result = self._lead(key, compute, expect)
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            flight.result = result
            return result
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def _compute_and_put(self, key: str, compute: Callable[[], Entry]) -> Entry:
        entry = compute()
        if not isinstance(entry, Entry):
            raise TypeError(f"compute() returned {type(entry).__name__}, expected Entry")
        with self._lock:
            self._computed += 1
        self.put(key, entry)
        return entry

    def _lead(
        self, key: str, compute: Callable[[], Entry], expect: Mapping[str, Any] | None
    ) -> tuple[Entry, str]:
        # Re-check: a flight for this key may have finished between our miss
        # and becoming leader. Membership tests first, so that the common
        # case does not count a second miss in the tier stats.
        if (self.memory is not None and key in self.memory) or (
            self.disk is not None and key in self.disk
        ):
            hit = self.get(key, expect)
            if hit is not None:
                return hit
        if self.disk is None and self.remote is None:
            return self._compute_and_put(key, compute), "computed"

        lease = LEASE_PREFIX + key
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}".encode()
        delay = self.poll_interval
        waited = False
        while True:
            holder = self._acquire_lease(lease, token)
            if holder is not None:
                try:
                    # The previous holder may have finished just before we
                    # took the lease over; re-check before recomputing.
                    hit = self._get_below_memory(key, expect)
                    if hit is not None:
                        return hit
                    return self._compute_and_put(key, compute), "computed"
                finally:
                    if holder is not _NO_LEASE:
                        holder.release_lease(lease, token)
            if not waited:
                waited = True
                with self._lock:
                    self._lease_waits += 1
                logger.debug("single-flight: %s is being computed by another process; polling", key)
            time.sleep(delay)
            delay = min(delay * 2, self.max_poll_interval)
            hit = self._get_below_memory(key, expect)
            if hit is not None:
                return hit

    def _acquire_lease(self, lease: str, token: bytes) -> Any:
        """Take the widest lease available; return its tier, ``_NO_LEASE``, or None if held elsewhere.

        The Redis lease covers every machine, so it is tried first; when the
        server cannot answer, the disk lease still covers this machine's
        processes. With neither, compute without one (duplicate work is
        wasteful, never wrong).
        """
        if self.remote is not None:
            acquired = self.remote.try_acquire_lease(lease, token, self.lease_ttl)
            if acquired is not None:
                return self.remote if acquired else None
        if self.disk is not None:
            return self.disk if self.disk.try_acquire_lease(lease, token, self.lease_ttl) else None
        return _NO_LEASE

    # -- housekeeping -----------------------------------------------------------------

    def clear(self, *, remote: bool = False) -> None:
        """Empty the local tiers, and the shared Redis namespace only if ``remote`` is True.

        The remote tier is shared with other workers, so clearing it is never a side effect
        of clearing this machine's cache.
        """
        if self.memory is not None:
            self.memory.clear()
        if self.disk is not None:
            self.disk.clear()
        if remote and self.remote is not None:
            self.remote.clear()

    def stats(self) -> dict[str, Any]:
        """Per-tier stats plus computation and single-flight counters."""
        with self._lock:
            own = {
                "computed": self._computed,
                "single_flight_waits": self._waits,
                "lease_waits": self._lease_waits,
                "memory_stale": self._memory_stale,
                "in_flight": len(self._flights),
                "remote_write_backs": self._remote_write_backs,
            }
        return {
            "memory": self.memory.stats() if self.memory is not None else None,
            "disk": self.disk.stats() if self.disk is not None else None,
            "redis": self.remote.stats() if self.remote is not None else None,
            **own,
        }

    def close(self) -> None:
        """Finish pending disk copies, then close the disk tier's connection and the Redis client's sockets."""
        self.flush()
        if self.disk is not None:
            self.disk.close()
        if self.remote is not None:
            self.remote.close()
