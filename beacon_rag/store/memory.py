"""In-process RAM tier: an LRU map bounded by tensor bytes, not entry count.

KV entries vary in size by orders of magnitude (a 16-token segment vs. a
4k-token one), so a count limit would either waste RAM or blow it; the
budget is therefore charged with :attr:`Entry.nbytes`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from .codec import Entry

logger = logging.getLogger(__name__)


class MemoryTier:
    """Thread-safe LRU cache of :class:`Entry` objects with a byte budget.

    Entries are stored and returned by reference (no copy): copying KV
    tensors on every hit would defeat the point of a RAM tier. Callers must
    treat returned entries as read-only.
    """

    def __init__(self, max_bytes: int) -> None:
        """``max_bytes`` is the tensor-byte budget; 0 disables the tier."""
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool):
            raise TypeError("max_bytes must be an int")
        if max_bytes < 0:
            raise ValueError(f"memory tier budget (max_bytes) must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # oldest first
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, key: str) -> Entry | None:
        """Return the entry and mark it most recently used, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry

    def put(self, key: str, entry: Entry) -> None:
        """Insert/replace ``key`` as most recently used, evicting LRU entries.

        An entry larger than the whole budget is not stored (and any older
        value under the key is dropped, so a stale version never outlives a
        newer write); evicting everything else for it would only thrash.
        """
        size = entry.nbytes
        with self._lock:
            self._remove_locked(key)
            if self.max_bytes == 0 or size > self.max_bytes:
                logger.debug(
                    "memory tier: not caching %s (%d bytes > budget %d)", key, size, self.max_bytes
                )
                return
            while self._entries and self._bytes + size > self.max_bytes:
                old_key, _ = self._entries.popitem(last=False)
                self._bytes -= self._sizes.pop(old_key)
                self._evictions += 1
                logger.debug("memory tier: evicted %s", old_key)
            self._entries[key] = entry
            self._sizes[key] = size
            self._bytes += size

    def _remove_locked(self, key: str) -> bool:
        if key not in self._entries:
            return False
        del self._entries[key]
        self._bytes -= self._sizes.pop(key)
        return True

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was present."""
        with self._lock:
            return self._remove_locked(key)

    def clear(self) -> None:
        """Drop every entry (counters are kept: they describe the process)."""
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self._bytes = 0

    def keys_lru(self) -> list[str]:
        """Keys from least to most recently used (for introspection/tests)."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: object) -> bool:
        """Membership test that does not count as a use (no LRU update)."""
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stats(self) -> dict[str, Any]:
        """Snapshot of size and counters."""
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._evictions,
            }
