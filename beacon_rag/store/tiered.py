"""Tiered store (RAM over disk) with single-flight computation.

Computing a segment's KV cache is the expensive thing this whole package
exists to avoid, so when several requests miss on the same key at once the
work must happen once: threads of one process coordinate through an
in-memory "flight", processes sharing a disk directory through a lease row
in the disk tier.
"""

from __future__ import annotations

import logging
import os
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

logger = logging.getLogger(__name__)

LEASE_PREFIX = "inflight:"
DEFAULT_LEASE_TTL = 120.0


@dataclass
class _Flight:
    """One in-process computation that other threads can wait on."""

    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[Entry, str] | None = None
    error: BaseException | None = None


class TieredStore:
    """Looks up memory, then disk; writes to all tiers; computes once on a miss.

    Either tier may be None (e.g. memory-only in tests, disk-only for a
    worker that should not hold RAM).
    """

    def __init__(
        self,
        memory: MemoryTier | None,
        disk: DiskTier | None,
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        poll_interval: float = 0.05,
        max_poll_interval: float = 0.5,
    ) -> None:
        """``lease_ttl`` bounds how long other processes wait for a computation
        whose owner died; a computation running longer than that may be
        duplicated by a waiter (wasteful, never wrong).
        ``poll_interval`` is the first sleep of a cross-process waiter, doubled
        up to ``max_poll_interval``.
        """
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be > 0")
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise ValueError("need 0 < poll_interval <= max_poll_interval")
        self.memory = memory
        self.disk = disk
        self.lease_ttl = float(lease_ttl)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = float(max_poll_interval)
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._computed = 0
        self._waits = 0
        self._lease_waits = 0
        self._memory_stale = 0

    # -- lookups ----------------------------------------------------------------------

    def get(self, key: str, expect: Mapping[str, Any] | None = None) -> tuple[Entry, str] | None:
        """Return ``(entry, "memory" | "disk")`` or None.

        ``expect`` is checked for memory hits too (the disk tier checks it
        while decoding), so an entry from another model/compressor never
        leaks out of RAM. A disk hit is promoted into memory.
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
        return self._get_disk(key, expect)

    def _get_disk(self, key: str, expect: Mapping[str, Any] | None) -> tuple[Entry, str] | None:
        if self.disk is None:
            return None
        entry = self.disk.get(key, expect)
        if entry is None:
            return None
        if self.memory is not None:
            self.memory.put(key, entry)
        return entry, "disk"

    def put(self, key: str, entry: Entry) -> None:
        """Write ``entry`` to every tier.

        Disk goes first because encoding validates the entry (JSON meta,
        tensor names): a bad entry then raises before anything is cached.
        """
        if self.disk is not None:
            self.disk.put(key, entry)
        if self.memory is not None:
            self.memory.put(key, entry)

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
        processes sharing the disk directory a lease row elects one
        computing process; the others poll the disk tier.
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
            entry, source = flight.result
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
        if self.disk is None:
            return self._compute_and_put(key, compute), "computed"

        lease = LEASE_PREFIX + key
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}".encode()
        delay = self.poll_interval
        waited = False
        while True:
            if self.disk.try_acquire_lease(lease, token, self.lease_ttl):
                try:
                    # The previous holder may have finished just before we
                    # took the lease over; a cheap existence check avoids
                    # recomputing in that window.
                    hit = self._get_disk(key, expect) if key in self.disk else None
                    if hit is not None:
                        return hit
                    return self._compute_and_put(key, compute), "computed"
                finally:
                    self.disk.release_lease(lease, token)
            if not waited:
                waited = True
                with self._lock:
                    self._lease_waits += 1
                logger.debug("single-flight: %s is being computed by another process; polling", key)
            time.sleep(delay)
            delay = min(delay * 2, self.max_poll_interval)
            if key in self.disk:
                hit = self._get_disk(key, expect)
                if hit is not None:
                    return hit

    # -- housekeeping -----------------------------------------------------------------

    def clear(self) -> None:
        """Empty every tier."""
        if self.memory is not None:
            self.memory.clear()
        if self.disk is not None:
            self.disk.clear()

    def stats(self) -> dict[str, Any]:
        """Per-tier stats plus computation and single-flight counters."""
        with self._lock:
            own = {
                "computed": self._computed,
                "single_flight_waits": self._waits,
                "lease_waits": self._lease_waits,
                "memory_stale": self._memory_stale,
                "in_flight": len(self._flights),
            }
        return {
            "memory": self.memory.stats() if self.memory is not None else None,
            "disk": self.disk.stats() if self.disk is not None else None,
            **own,
        }
