"""Content-addressed KV cache store: bytes and JSON metadata, never models.

Tiers: :class:`MemoryTier` (RAM, LRU by bytes) above :class:`DiskTier`
(diskcache) above an optional shared :class:`RedisTier`, combined by
:class:`TieredStore`. The payload format lives in :mod:`.codec`, so every
tier stores and validates the same bytes. The ``redis`` client is imported
only when a :class:`RedisTier` is created.
"""

from .codec import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CorruptEntry,
    Entry,
    decode_entry,
    encode_entry,
)
from .disk import DiskTier, RefusedRow, SafeDisk
from .memory import MemoryTier
from .redis_tier import RedisTier, redis_tier_from_settings
from .tiered import LEASE_PREFIX, TieredStore

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LEASE_PREFIX",
    "CorruptEntry",
    "DiskTier",
    "Entry",
    "MemoryTier",
    "RedisTier",
    "RefusedRow",
    "SafeDisk",
    "TieredStore",
    "decode_entry",
    "encode_entry",
    "redis_tier_from_settings",
]
