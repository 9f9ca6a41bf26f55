"""Shared remote tier on Redis: compressed KV shared by processes on several machines.

The tier sits below RAM and disk. It stores exactly the blobs the disk tier
stores (:func:`encode_entry`), so every read is validated the same way
(format, key, checksum, expected identity) and nothing is ever unpickled: the
client is used with raw ``bytes`` in and out, and the bytes go to
:func:`decode_entry` only.

Redis is an optimisation here, never a dependency of a request. Every call
that reaches the server can fail; a failure marks the tier *down*, logs one
warning per outage, and for a back-off period (doubling up to a cap) every
operation returns at once as a miss / skipped write, so a dead server costs
nothing per request. After the back-off the next operation tries again.

Memory is bounded on the server (``maxmemory`` and its eviction policy, which
the deployment owns) and optionally per entry by a TTL; entries larger than
``max_entry_bytes`` are not sent. A write the server refuses (``OOM`` under
``noeviction``) is a skipped write, not an outage.

Leases (``SET NX PX``) let workers on different machines elect one
computation per key, as the disk tier's lease rows do for one directory.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .codec import CorruptEntry, Entry, decode_entry, encode_entry

logger = logging.getLogger(__name__)

ENV_URL = "BEACON_RAG_REDIS_URL"
ENV_NAMESPACE = "BEACON_RAG_REDIS_NAMESPACE"
ENV_TTL = "BEACON_RAG_REDIS_TTL"
DEFAULT_NAMESPACE = "beacon-rag"
# Redis refuses bulk strings above proto-max-bulk-len (512 MB by default).
DEFAULT_MAX_ENTRY_BYTES = 512 * 2**20
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,200}$")
_SCHEMES = ("redis", "rediss", "unix")

# Compare-and-delete: release a lease only while it still holds our token, in one server step,
# so that a lease that expired and was taken over by another worker is never deleted by us.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def redact_url(url: str) -> str:
    """The URL without its password, for logs and stats."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def ttl_from_env(value: str | None) -> float | None:
    """Parse ``BEACON_RAG_REDIS_TTL`` (seconds; empty or 0 means no TTL)."""
    if value is None or not value.strip():
        return None
    try:
        ttl = float(value)
    except ValueError:
        raise ValueError(f"{ENV_TTL} must be a number of seconds, got {value!r}") from None
    if ttl < 0:
        raise ValueError(f"{ENV_TTL} must be >= 0 seconds, got {value!r}")
    return ttl or None


class RedisTier:
    """A namespace of encoded entries on a Redis server, shared by every worker that uses it.

    Keys are ``{namespace}:kv:{key}`` and leases ``{namespace}:lease:{key}``; two deployments
    (or two incompatible versions) on one server keep apart by choosing different namespaces.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float | None = None,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        connect_timeout: float = 1.0,
        socket_timeout: float = 10.0,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
    ) -> None:
        """Configure the client; nothing is sent until the first operation.

        Not connecting here is deliberate: a worker must start (and serve from its local
        tiers) while the shared server is down. ``ttl`` (seconds) is set on every write and
        renewed on every hit, so entries nobody reads expire while hot ones stay.
        ``socket_timeout`` bounds one read or write; it must leave room for the largest
        entry on the slowest link. After a failure the tier waits ``retry_initial`` seconds,
        doubling up to ``retry_max``, before trying the server again.
        """
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as err:  # pragma: no cover - depends on the installation
            raise ImportError(
                "the Redis tier needs the redis client: pip install 'beacon-rag[redis]' (or pip install redis)"
            ) from err
        if not isinstance(url, str) or not url.strip():
            raise ValueError("redis url must be a non-empty string such as redis://localhost:6379/0")
        scheme = urlsplit(url).scheme
        if scheme not in _SCHEMES:
            raise ValueError(
                f"redis url must start with redis://, rediss:// or unix://, got {redact_url(url)!r}"
            )
        if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
            raise ValueError(
                f"redis namespace must be 1-200 characters of letters, digits and _.:/@+-, got {namespace!r}"
            )
        if ttl is not None and not ttl > 0:
            raise ValueError(f"redis ttl must be > 0 seconds (or None for no expiry), got {ttl!r}")
        if not isinstance(max_entry_bytes, int) or isinstance(max_entry_bytes, bool) or max_entry_bytes <= 0:
            raise ValueError(f"max_entry_bytes must be a positive int, got {max_entry_bytes!r}")
        if connect_timeout <= 0 or socket_timeout <= 0:
            raise ValueError("connect_timeout and socket_timeout must be > 0")
        if retry_initial <= 0 or retry_max < retry_initial:
            raise ValueError("need 0 < retry_initial <= retry_max")
        self.url = url
        self.namespace = namespace
        self.ttl = float(ttl) if ttl is not None else None
        self.max_entry_bytes = max_entry_bytes
        self.retry_initial = float(retry_initial)
        self.retry_max = float(retry_max)
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._connection_errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.BusyLoadingError,
            OSError,
        )
        try:
            # One immediate retry only: it re-dials a pooled connection the server closed (e.g.
            # after a restart). Longer waits are our own back-off, which skips the server
            # entirely instead of stalling each request.
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=connect_timeout,
                socket_timeout=socket_timeout,
                retry=Retry(NoBackoff(), 1),
                decode_responses=False,
            )
        except ValueError as err:
            raise ValueError(f"bad redis url {redact_url(url)!r}: {err}") from None
        self._release = self._client.register_script(_RELEASE_SCRIPT)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._failures = 0  # consecutive failures, sets the back-off
        self._outages = 0
        self._checked_limits = False
        self._warned: set[str] = set()
        self._counters = dict.fromkeys(
            ("hits", "misses", "corrupt", "writes", "write_refused", "skipped_down", "errors",
             "bytes_sent", "bytes_received", "too_large"), 0)

    # -- keys ----------------------------------------------------------------------------

    def entry_key(self, key: str) -> str:
        """The Redis key holding ``key``'s blob."""
        return f"{self.namespace}:kv:{key}"

    def lease_key(self, name: str) -> str:
        """The Redis key of lease ``name``."""
        return f"{self.namespace}:lease:{name}"

    # -- availability --------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while backing off after a failure (operations then skip the server)."""
        with self._lock:
            return time.monotonic() >= self._down_until

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def _skip(self) -> bool:
        """True (and counted) when the server is in back-off and must not be called."""
        with self._lock:
            if time.monotonic() < self._down_until:
                self._counters["skipped_down"] += 1
                return True
            return False

    def _failed(self, action: str, exc: BaseException) -> None:
        """Record a failed call: connection problems start (or extend) an outage."""
        self._count("errors")
        if not isinstance(exc, self._connection_errors):
            # The server answered, with an error about this command: not an outage. One warning
            # per kind of error (a full server under noeviction refuses every write alike).
            kind = f"{type(exc).__name__}:{str(exc)[:40]}"
            with self._lock:
                first = kind not in self._warned
                self._warned.add(kind)
            (logger.warning if first else logger.debug)(
                "redis tier: %s failed (%s: %s)", action, type(exc).__name__, exc)
            return
        with self._lock:
            self._failures += 1
            delay = min(self.retry_initial * 2 ** (self._failures - 1), self.retry_max)
            self._down_until = time.monotonic() + delay
            first = self._failures == 1
            if first:
                self._outages += 1
        if first:
            logger.warning(
                "redis tier: %s unreachable (%s: %s); serving from local tiers, retrying in %.1f s "
                "with back-off", redact_url(self.url), type(exc).__name__, exc, delay)
        else:
            logger.debug("redis tier: still unreachable (%s); next try in %.1f s", exc, delay)

    def _succeeded(self) -> None:
        with self._lock:
            recovered = self._failures > 0
            self._failures = 0
            self._down_until = 0.0
            check = not self._checked_limits
            self._checked_limits = True
        if recovered:
            logger.warning("redis tier: %s reachable again", redact_url(self.url))
        if check:
            self._check_limits()

    def _check_limits(self) -> None:
        """Warn once if nothing bounds what we store: no maxmemory on the server and no TTL.

        CONFIG is often disabled on managed servers; then we cannot tell and stay quiet.
        """
        if self.ttl is not None:
            return
        try:
            reply = self._client.config_get("maxmemory")
            # Key type differs across client versions (bytes or str).
            maxmemory = int(reply.get("maxmemory", reply.get(b"maxmemory", 0)))
        except (*self._errors, ValueError):
            return
        if maxmemory == 0:
            logger.warning(
                "redis tier: %s has no maxmemory limit and entries have no TTL; the shared cache "
                "can grow without bound (set maxmemory and maxmemory-policy allkeys-lru on the "
                "server, or a TTL)", redact_url(self.url))

    # -- entries -------------------------------------------------------------------------

    def get(self, key: str, expect: Mapping[str, Any] | None = None) -> Entry | None:
        """Return the verified entry, or None (absent, corrupt, mismatched, or server down).

        A bad value is logged, deleted and reported as a miss, like the disk tier does: the
        caller recomputes and overwrites it. A hit renews the TTL.
        """
        blob = self.get_blob(key)
        if blob is None:
            return None
        try:
            entry = decode_entry(key, blob, expect)
        except CorruptEntry as exc:
            self._discard(key, str(exc))
            return None
        self._count("hits")
        return entry

    def get_blob(self, key: str) -> bytes | None:
        """The raw stored bytes (not validated), or None; counts a miss when absent."""
        if self._skip():
            return None
        name = self.entry_key(key)
        try:
            if self.ttl is not None:
                blob = self._client.getex(name, px=int(self.ttl * 1000))
            else:
                blob = self._client.get(name)
        except self._errors as exc:
            self._failed(f"read of {key}", exc)
            return None
        self._succeeded()
        if blob is None:
            self._count("misses")
            return None
        self._count("bytes_received", len(blob))
        return bytes(blob)

    def _discard(self, key: str, reason: str) -> None:
        # Race note: another worker may have replaced the bad value with a good one between
        # our read and this delete; the cost is one recomputation, never a wrong answer.
        logger.warning("redis tier: dropping entry %s: %s", key, reason)
        with self._lock:
            self._counters["corrupt"] += 1
            self._counters["misses"] += 1
        self.delete(key)

    def put(self, key: str, entry: Entry) -> int:
        """Encode and store ``entry``; returns the bytes sent (0 if skipped).

        Encoding errors are caller bugs and raise; server problems are logged and skipped.
        """
        return self.put_blob(key, encode_entry(key, entry))

    def put_blob(self, key: str, blob: bytes) -> int:
        """Store an already encoded blob (see :meth:`put`)."""
        if len(blob) > self.max_entry_bytes:
            self._count("too_large")
            logger.debug("redis tier: not sending %s (%d bytes > max_entry_bytes %d)",
                         key, len(blob), self.max_entry_bytes)
            return 0
        if self._skip():
            return 0
        px = int(self.ttl * 1000) if self.ttl is not None else None
        try:
            self._client.set(self.entry_key(key), blob, px=px)
        except self._errors as exc:
            if not isinstance(exc, self._connection_errors):
                self._count("write_refused")  # e.g. OOM under maxmemory-policy noeviction
            self._failed(f"write of {key} ({len(blob)} bytes)", exc)
            return 0
        self._succeeded()
        with self._lock:
            self._counters["writes"] += 1
            self._counters["bytes_sent"] += len(blob)
        return len(blob)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if a value was deleted."""
        if self._skip():
            return False
        try:
            removed = bool(self._client.delete(self.entry_key(key)))
        except self._errors as exc:
            self._failed(f"delete of {key}", exc)
            return False
        self._succeeded()
        return removed

    def __contains__(self, key: object) -> bool:
        """Existence check (one round trip, no transfer); False while the server is down."""
        if type(key) is not str or self._skip():
            return False
        try:
            found = bool(self._client.exists(self.entry_key(key)))
        except self._errors as exc:
            self._failed(f"lookup of {key}", exc)
            return False
        self._succeeded()
        return found

    def clear(self) -> int:
        """Delete every key of this namespace (entries and leases), never other namespaces.

        SCAN in batches rather than KEYS, which would block a shared server.
        """
        if self._skip():
            return 0
        removed = 0
        try:
            batch: list[bytes] = []
            for name in self._client.scan_iter(match=f"{_glob_escape(self.namespace)}:*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    removed += int(self._client.delete(*batch))
                    batch.clear()
            if batch:
                removed += int(self._client.delete(*batch))
        except self._errors as exc:
            self._failed("clear", exc)
            return removed
        self._succeeded()
        return removed

    # -- leases: cross-machine single-flight ---------------------------------------------

    def try_acquire_lease(self, name: str, token: bytes, ttl: float) -> bool | None:
        """``SET NX PX``: True if we now hold the lease, False if another worker does.

        None means "cannot tell" (server down): the caller falls back to another lease (the
        disk tier's) or computes without one. Losing de-duplication is better than blocking.
        """
        if self._skip():
            return None
        try:
            acquired = self._client.set(self.lease_key(name), token, nx=True, px=max(1, int(ttl * 1000)))
        except self._errors as exc:
            self._failed(f"lease {name}", exc)
            return None
        self._succeeded()
        return bool(acquired)

    def release_lease(self, name: str, token: bytes) -> None:
        """Delete lease ``name`` only if it still holds ``token`` (atomic, server-side)."""
        if self._skip():
            return  # it expires by itself
        try:
            self._release(keys=[self.lease_key(name)], args=[token])
        except self._errors as exc:
            self._failed(f"release of lease {name}", exc)
            return
        self._succeeded()

    # -- housekeeping --------------------------------------------------------------------

    def server_memory(self) -> dict[str, Any] | None:
        """``used_memory``, ``maxmemory`` and the eviction policy, or None if unavailable."""
        if self._skip():
            return None
        try:
            info = self._client.info("memory")
        except self._errors as exc:
            self._failed("INFO memory", exc)
            return None
        self._succeeded()
        return {k: info.get(k) for k in ("used_memory", "maxmemory", "maxmemory_policy")}

    def stats(self) -> dict[str, Any]:
        """This process's counters plus configuration (the password is never shown)."""
        with self._lock:
            counters = dict(self._counters)
            down_for = max(0.0, self._down_until - time.monotonic())
            outages = self._outages
            down = self._failures > 0
        return {
            "url": redact_url(self.url),
            "namespace": self.namespace,
            "ttl_s": self.ttl,
            # "down": the last call failed (an outage not yet over); "available": not backing off,
            # i.e. the next call will try the server again.
            "down": down,
            "available": down_for == 0.0,
            "retry_in_s": round(down_for, 3),
            "outages": outages,
            **counters,
        }

    def close(self) -> None:
        """Close pooled connections (the tier reconnects if used again)."""
        try:
            self._client.close()
        except self._errors:  # pragma: no cover - closing a dead socket
            pass


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a namespace matches only itself."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def from_settings(
    url: str | None,
    *,
    namespace: str | None = None,
    ttl: float | None = None,
) -> RedisTier | None:
    """Build the tier from arguments, falling back to the environment; None when unset.

    ``url`` None reads ``BEACON_RAG_REDIS_URL``; an empty string disables the tier even when
    the variable is set. ``namespace`` None reads ``BEACON_RAG_REDIS_NAMESPACE`` (default
    ``beacon-rag``); ``ttl`` None reads ``BEACON_RAG_REDIS_TTL`` (seconds, unset = no TTL).
    """
    if url is None:
        url = os.environ.get(ENV_URL, "")
    if not url.strip():
        return None
    if namespace is None:
        namespace = os.environ.get(ENV_NAMESPACE) or DEFAULT_NAMESPACE
    if ttl is None:
        ttl = ttl_from_env(os.environ.get(ENV_TTL))
    return RedisTier(url, namespace=namespace, ttl=ttl)


# The name the rest of the package imports, so that it reads unambiguously at the call site.
redis_tier_from_settings = from_settings

__all__ = [
    "DEFAULT_NAMESPACE",
    "ENV_NAMESPACE",
    "ENV_TTL",
    "ENV_URL",
    "RedisTier",
    "from_settings",
    "redact_url",
    "redis_tier_from_settings",
    "ttl_from_env",
]
