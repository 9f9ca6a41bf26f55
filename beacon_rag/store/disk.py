"""Disk tier on top of diskcache (SQLite index + value files).

diskcache gives us what is hard to get right by hand: atomic writes (a value
file is fully written before the SQLite row that points to it commits), safe
concurrent use by several processes sharing one directory, and size-bounded
LRU eviction.

What it does not give us is a safe read path: its default :class:`Disk`
unpickles any row stored in pickle mode, so anyone able to write into the
cache directory could run code in every reader. :class:`SafeDisk` accepts
only ``str`` keys and ``bytes`` values and refuses to decode anything else;
the bytes are then verified by :func:`decode_entry`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import os.path as op
import sqlite3
import threading
import time
from collections.abc import Mapping
from typing import Any, Self

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from .codec import CorruptEntry, Entry, decode_entry, encode_entry

logger = logging.getLogger(__name__)

DEFAULT_DISK_BYTES = 10 * 2**30

# Errors from the storage layer that must degrade to a miss / skipped write
# rather than crash an inference request.
_STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, sqlite3.Error, diskcache.Timeout)

_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _is_out_of_space(exc: BaseException) -> bool:
    """A full disk, a quota or a file-size limit: the same for us (the write could not happen)."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


def _is_damaged(exc: BaseException) -> bool:
    """True for SQLite errors that mean the index file itself is broken (not busy, not full).

    Such errors are plain ``DatabaseError`` ("file is not a database", "database disk image is
    malformed"); busy, locked or full databases raise ``OperationalError`` and pass.
    """
    return type(exc) is sqlite3.DatabaseError or "malformed" in str(exc) or "not a database" in str(exc)


class RefusedRow(Exception):
    """A diskcache row that SafeDisk will not decode (pickle, text, non-bytes).

    Deliberately *not* an OSError: diskcache swallows OSError from ``fetch``
    as "file vanished, return default", which would hide the row from us
    instead of letting DiskTier delete it.
    """


class SafeDisk(diskcache.Disk):
    """diskcache serialiser restricted to ``str`` keys and ``bytes`` values.

    Writing anything else raises TypeError (a caller bug); reading a row in
    any mode other than RAW-bytes or BINARY raises :class:`RefusedRow`, so
    pickle is never invoked on data from disk.
    """

    def put(self, key: Any) -> tuple[str, bool]:
        """Map a key to its database form; only str is accepted, stored raw."""
        if type(key) is not str:
            raise TypeError(f"SafeDisk keys must be str, got {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> str:
        """Map a database key back; pickled keys are refused, never loaded."""
        if not raw or type(key) is not str:
            raise RefusedRow("row has a non-str (possibly pickled) key")
        return key

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        """Store bytes in the row (small) or in a value file (large).

        Unlike diskcache's version, a failed file write (disk full) removes
        the partial file instead of leaving an orphan nobody accounts for.
        """
        if read or type(value) is not bytes:
            raise TypeError(f"SafeDisk values must be bytes, got {type(value).__name__}")
        if len(value) < self.min_file_size:
            return 0, MODE_RAW, None, sqlite3.Binary(value)
        filename, full_path = self.filename(key, value)
        try:
            self._write_file(full_path, value)
        except BaseException:
            self.remove(filename)
            raise
        return len(value), MODE_BINARY, filename, None

    @staticmethod
    def _write_file(full_path: str, value: bytes) -> None:
        full_dir = op.dirname(full_path)
        for attempt in range(10):
            # Another process may remove the (empty) sub-directory between our
            # makedirs and open; diskcache retries for the same reason.
            with contextlib.suppress(FileExistsError):
                os.makedirs(full_dir, exist_ok=True)
            try:
                writer = open(full_path, "xb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                if attempt == 9:
                    raise
                continue
            with writer:
                writer.write(value)
            return

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        """Return the stored bytes; refuse every mode that is not ours."""
        if mode == MODE_RAW:
            if isinstance(value, (bytes, memoryview)):
                return bytes(value)
            raise RefusedRow(f"raw row holds a {type(value).__name__}, not bytes")
        if mode == MODE_BINARY:
            if not filename:
                raise RefusedRow("binary row without a value file")
            full_path = op.join(self._directory, filename)
            if read:
                return open(full_path, "rb")  # the caller owns the handle (diskcache streams it)
            with open(full_path, "rb") as reader:
                return reader.read()
        raise RefusedRow(f"row stored in mode {mode} (pickle/text) is refused")


_warned_lock = threading.Lock()
_warned_keys: set[str] = set()
_WARNED_KEYS_CAP = 100_000


def _warn_once(key: str, message: str, *args: Any) -> None:
    """Log a warning the first time ``key`` is reported in this process.

    A corrupt entry is deleted when seen, but several processes (or a
    recurring writer bug) could keep re-creating it; one line per key keeps
    the log readable while still surfacing every distinct problem.
    """
    with _warned_lock:
        first = key not in _warned_keys
        if first and len(_warned_keys) < _WARNED_KEYS_CAP:
            _warned_keys.add(key)
    if first:
        logger.warning(message, *args)
    else:
        logger.debug(message, *args)


class DiskTier:
    """Size-bounded, LRU, multi-process-safe disk tier of encoded entries."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = DEFAULT_DISK_BYTES) -> None:
        """Open (or create) the cache in ``directory``.

        ``max_bytes`` bounds diskcache's volume estimate (SQLite pages plus
        value files). Note diskcache persists settings in the directory: the
        most recently opened tier's limit applies to all sharing it.
        """
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool):
            raise TypeError("max_bytes must be an int")
        if max_bytes < 0:
            raise ValueError(f"disk tier budget (max_bytes) must be >= 0 bytes, got {max_bytes}")
        self.directory = os.fspath(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._corrupt = 0
        self._rebuilds = 0
        self._out_of_space = 0
        try:
            self._cache = self._open()
        except sqlite3.DatabaseError as exc:
            if not _is_damaged(exc):
                raise
            self._cache = self._set_aside_and_reopen(exc)

    def _open(self) -> diskcache.Cache:
        return diskcache.Cache(
            self.directory,
            size_limit=self.max_bytes,
            eviction_policy="least-recently-used",
            disk=SafeDisk,
        )

    def _set_aside_and_reopen(self, exc: BaseException) -> diskcache.Cache:
        """Move a damaged cache directory aside and start an empty one in its place.

        Entries are a cache, so losing them costs recomputation only; keeping the damaged
        folder (renamed, never read again) leaves it for inspection instead of deleting data.
        """
        aside = f"{self.directory}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        logger.warning("disk tier: the cache index in %s is damaged (%s); moved it to %s and starting empty",
                       self.directory, exc, aside)
        with contextlib.suppress(OSError):
            os.rename(self.directory, aside)
        os.makedirs(self.directory, exist_ok=True)
        with self._lock:
            self._rebuilds += 1
        return self._open()

    def _storage_failed(self, action: str, exc: BaseException) -> None:
        """Log a failed storage call; a damaged SQLite index is set aside and rebuilt."""
        if isinstance(exc, sqlite3.DatabaseError) and _is_damaged(exc):
            with self._lock:
                old, self._cache = self._cache, None  # type: ignore[assignment]
            with contextlib.suppress(Exception):
                old.close()
            self._cache = self._set_aside_and_reopen(exc)
        elif _is_out_of_space(exc):
            # One clear warning, not one per request: a full disk stays full for a while, and the
            # engine keeps answering from RAM (or by recomputing) in the meantime.
            with self._lock:
                self._out_of_space += 1
                first = self._out_of_space == 1
            log = logger.warning if first else logger.debug
            log("disk tier: no space left in %s (%s); %s. Entries stay in RAM only (and are recomputed "
                "after eviction) until space frees up", self.directory, exc, action)
        else:
            logger.warning("disk tier: %s in %s: %s", action, self.directory, exc)

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def get(self, key: str, expect: Mapping[str, Any] | None = None) -> Entry | None:
        """Return the verified entry, or None.

        A row that is refused, corrupt or fails ``expect`` is logged (once per
        key per process), deleted and reported as a miss: the caller will
        recompute and overwrite it, which is always correct.
        """
        try:
            blob = self._cache.get(key, default=None)
        except RefusedRow as exc:
            self._discard(key, str(exc))
            return None
        except _STORAGE_ERRORS as exc:
            self._storage_failed(f"read of {key} (treated as a miss)", exc)
            self._count("_misses")
            return None
        if blob is None:
            self._count("_misses")
            return None
        try:
            entry = decode_entry(key, blob, expect)
        except CorruptEntry as exc:
            self._discard(key, str(exc))
            return None
        self._count("_hits")
        return entry

    def _discard(self, key: str, reason: str) -> None:
        # Race note: another process may have replaced the bad row with a good
        # one between our read and this delete; the cost is one recompute.
        _warn_once(key, "disk tier: dropping entry %s in %s: %s", key, self.directory, reason)
        with self._lock:
            self._corrupt += 1
            self._misses += 1
        try:
            self._cache.delete(key, retry=True)
        except _STORAGE_ERRORS as exc:
            logger.warning("disk tier: could not delete bad entry %s: %s", key, exc)

    def put(self, key: str, entry: Entry) -> None:
        """Encode and store ``entry``; storage failures are logged, not raised.

        A full or failing disk must not turn a cache into an outage: the
        entry is simply not persisted. Encoding errors (bad meta/tensors) are
        caller bugs and do propagate.
        """
        blob = encode_entry(key, entry)
        if len(blob) > self.max_bytes:
            logger.debug("disk tier: not caching %s (%d bytes > limit %d)", key, len(blob), self.max_bytes)
            return
        try:
            self._cache.set(key, blob)
        except _STORAGE_ERRORS as exc:
            self._storage_failed(f"could not store {key}", exc)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if a row was deleted."""
        try:
            return bool(self._cache.delete(key, retry=True))
        except _STORAGE_ERRORS as exc:
            logger.warning("disk tier: could not delete %s: %s", key, exc)
            return False

    def clear(self) -> None:
        """Remove every row (including in-flight leases) from the directory."""
        self._cache.clear(retry=True)

    def __contains__(self, key: object) -> bool:
        """Cheap existence check (no read, no LRU update, no stats)."""
        if type(key) is not str:
            return False
        try:
            return key in self._cache
        except _STORAGE_ERRORS:
            return False

    def __len__(self) -> int:
        return len(self._cache)

    # -- leases: cross-process single-flight support --------------------------------

    def try_acquire_lease(self, name: str, token: bytes, ttl: float) -> bool:
        """Atomically create lease row ``name`` holding ``token`` for ``ttl`` s.

        Uses diskcache's ``add``, which is atomic across processes and treats
        an expired row as absent, so a lease left by a crashed process frees
        itself. If the store itself fails we answer True ("go ahead"): losing
        de-duplication is better than blocking work on a broken disk.
        """
        try:
            return bool(self._cache.add(name, token, expire=ttl, retry=True))
        except _STORAGE_ERRORS as exc:
            self._storage_failed(f"lease {name} unavailable, proceeding without it", exc)
            return True

    def release_lease(self, name: str, token: bytes) -> None:
        """Delete lease ``name`` only if it still holds our ``token``.

        If our lease expired and another process took it over, deleting it
        would let a third process start a duplicate computation.
        """
        try:
            with self._cache.transact(retry=True):
                try:
                    current = self._cache.get(name, default=None)
                except RefusedRow:
                    current = None
                if current == token:
                    self._cache.delete(name, retry=True)
        except _STORAGE_ERRORS as exc:
            self._storage_failed(f"could not release lease {name}", exc)

    # -- housekeeping -----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Row count, diskcache volume estimate, limits and this process' counters."""
        try:
            entries = len(self._cache)
            volume = self._cache.volume()
        except _STORAGE_ERRORS as exc:
            logger.warning("disk tier: stats unavailable: %s", exc)
            entries, volume = -1, -1
        with self._lock:
            return {
                "entries": entries,
                "bytes": volume,
                "max_bytes": self.max_bytes,
                "directory": self.directory,
                "hits": self._hits,
                "misses": self._misses,
                "corrupt": self._corrupt,
                "rebuilds": self._rebuilds,
                "out_of_space": self._out_of_space,
            }

    def close(self) -> None:
        """Close this thread's SQLite connection (others close on thread exit)."""
        self._cache.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DEFAULT_DISK_BYTES", "DiskTier", "RefusedRow", "SafeDisk"]
