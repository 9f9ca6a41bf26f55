"""Content-addressed KV cache store: bytes and JSON metadata, never models.

Tiers: :class:`MemoryTier` (RAM, LRU by bytes) above :class:`DiskTier`
(diskcache), combined by :class:`TieredStore`. The payload format lives in
:mod:`.codec` so that further tiers (e.g. Redis) reuse it unchanged.
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
from .tiered import LEASE_PREFIX, TieredStore

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LEASE_PREFIX",
    "CorruptEntry",
    "DiskTier",
    "Entry",
    "MemoryTier",
    "RefusedRow",
    "SafeDisk",
    "TieredStore",
    "decode_entry",
    "encode_entry",
]
