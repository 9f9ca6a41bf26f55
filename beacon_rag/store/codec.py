"""Payload codec for cached KV entries: one safetensors blob per entry.

The codec is deliberately separate from the storage tiers: every tier that
persists bytes (disk today, Redis later) must agree on one self-describing,
self-verifying format, so that an entry written by one tier, process or
machine can be validated by any other without trusting where it came from.

Why safetensors: it is a plain header + raw bytes format, so reading it can
never execute code (unlike pickle / ``torch.load``), and it supports the
dtypes a KV cache uses (float32/16, bfloat16, int64, ...).

Why a checksum on top: safetensors validates structure, not content. A
flipped bit inside tensor data would otherwise load "successfully" and feed
garbage attention states to the model, which is far worse than a cache miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch

logger = logging.getLogger(__name__)

FORMAT_NAME = "beacon-rag-kv"
FORMAT_VERSION = 1

# safetensors reserves this name for the string->string metadata table.
_RESERVED_TENSOR_NAME = "__metadata__"
_HEADER_LEN_BYTES = 8
_REQUIRED_FIELDS = ("format", "format_version", "key", "meta", "checksum")


class CorruptEntry(Exception):
    """A stored payload cannot be trusted; the message names what is wrong.

    Callers treat this as a cache miss (and usually delete the entry): a
    recomputation is always correct, a wrong KV cache silently is not.
    """


@dataclass
class Entry:
    """One cached unit: named tensors plus JSON metadata.

    ``tensors`` are expected to be contiguous CPU tensors. Entries handed out
    by the store may be shared between callers (the memory tier does not
    copy), so treat them as read-only.

    ``meta`` must be JSON-serialisable. After a trip through the codec it
    comes back as plain JSON types (tuples become lists, keys become str).
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data; this is what memory budgets are charged."""
        return sum(int(t.nbytes) for t in self.tensors.values())


def canonical_json(value: Any) -> str:
    """Serialise ``value`` to one deterministic JSON string.

    Sorted keys and fixed separators make the checksum independent of dict
    insertion order; NaN/Infinity are refused because they are not JSON and
    would not round-trip through other readers (e.g. a future Redis client).
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def meta_mismatch(meta: Mapping[str, Any], expect: Mapping[str, Any] | None) -> str | None:
    """Return a description of the first ``expect`` field ``meta`` violates, or None.

    Values are compared by canonical JSON, i.e. strictly by JSON type and
    value: ``(1, 2)`` equals ``[1, 2]`` (tuples cannot survive JSON anyway),
    but ``1`` does not equal ``1.0`` or ``True``. Being strict is the safe
    side for a cache: a false miss costs a recompute, a false hit is wrong.
    """
    if not expect:
        return None
    for k, want in expect.items():
        if k not in meta:
            return f"meta lacks expected field {k!r}"
        try:
            got_s = canonical_json(meta[k])
        except (TypeError, ValueError):
            return f"meta field {k!r} is not JSON-serialisable"
        want_s = canonical_json(want)
        if got_s != want_s:
            return f"meta field {k!r} is {_short(got_s)}, expected {_short(want_s)}"
    return None


def _short(s: str, limit: int = 120) -> str:
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """Zero-copy view of a contiguous CPU tensor's raw bytes.

    Going through uint8 works for every dtype, including bfloat16 and float8
    which numpy cannot represent directly.
    """
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _checksum(meta_json: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over meta JSON and each tensor (sorted by name).

    Every field is length-prefixed so that no two different payloads can
    produce the same byte stream (e.g. moving a byte from a name into the
    data).
    """
    h = hashlib.sha256()

    def part(data: bytes | memoryview) -> None:
        h.update(struct.pack("<Q", len(data)))
        h.update(data)

    part(meta_json.encode("utf-8"))
    h.update(struct.pack("<Q", len(tensors)))
    for name in sorted(tensors):
        t = tensors[name]
        part(name.encode("utf-8"))
        part(str(t.dtype).encode("ascii"))
        part(json.dumps(list(t.shape)).encode("ascii"))
        part(_tensor_bytes(t))
    return h.hexdigest()


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return tensors in the form safetensors can save.

    Tolerates what callers commonly produce (GPU tensors, non-contiguous
    slices, several views into one KV buffer) by copying only where needed,
    instead of letting safetensors refuse the save.
    """
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {type(name).__name__}")
        if name == _RESERVED_TENSOR_NAME:
            raise ValueError(f"tensor name {name!r} is reserved by safetensors")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        if not t.is_contiguous():
            t = t.contiguous()
        out[name] = t
    # safetensors refuses tensors sharing storage; clone all but the first of
    # each group (cheap in the normal case where nothing is shared).
    seen: set[int] = set()
    for name in sorted(out):
        t = out[name]
        if t.numel() == 0:
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            out[name] = t.clone()
        else:
            seen.add(ptr)
    return out


def encode_entry(key: str, entry: Entry) -> bytes:
    """Serialise ``entry`` stored under ``key`` into one safetensors blob.

    The key is embedded so that a blob copied or renamed onto another key is
    detected on read. Raises TypeError/ValueError for entries that cannot be
    represented (non-JSON meta, bad tensor names); those are caller bugs, not
    corruption.
    """
    if not isinstance(key, str) or not key:
        raise TypeError("key must be a non-empty str")
    if not isinstance(entry.meta, Mapping):
        raise TypeError(f"entry.meta must be a mapping, got {type(entry.meta).__name__}")
    tensors = _prepare_tensors(entry.tensors)
    try:
        meta_json = canonical_json(dict(entry.meta))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"entry.meta is not JSON-serialisable: {exc}") from exc
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "key": key,
        "meta": meta_json,
        "checksum": _checksum(meta_json, tensors),
    }
    return safetensors.torch.save(tensors, metadata=metadata)


def _read_header_metadata(blob: bytes) -> dict[str, str]:
    """Parse the safetensors header ourselves to get its metadata table.

    ``safetensors.torch.load`` returns only tensors; the header is a
    length-prefixed JSON object, which is safe to parse with ``json``.
    """
    if len(blob) < _HEADER_LEN_BYTES:
        raise CorruptEntry(f"blob too short ({len(blob)} bytes) for a safetensors header")
    (header_len,) = struct.unpack("<Q", blob[:_HEADER_LEN_BYTES])
    if header_len > len(blob) - _HEADER_LEN_BYTES:
        raise CorruptEntry(
            f"header length {header_len} exceeds blob size {len(blob)} (truncated or not safetensors)"
        )
    try:
        header = json.loads(blob[_HEADER_LEN_BYTES : _HEADER_LEN_BYTES + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptEntry(f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CorruptEntry("header is not a JSON object")
    metadata = header.get(_RESERVED_TENSOR_NAME)
    if not isinstance(metadata, dict):
        raise CorruptEntry("header has no metadata table")
    for field_name in _REQUIRED_FIELDS:
        if not isinstance(metadata.get(field_name), str):
            raise CorruptEntry(f"metadata field {field_name!r} missing or not a string")
    return metadata


def decode_entry(key: str, blob: bytes, expect: Mapping[str, Any] | None = None) -> Entry:
    """Parse and verify a blob produced by :func:`encode_entry`.

    Checks, in order: header structure, format name, format version, that the
    blob belongs to ``key``, tensor data (via safetensors, never pickle), the
    checksum, and finally that every ``expect`` field equals the stored meta
    (how the engine rejects entries from another model/compressor/dtype).

    Any problem with the blob raises :class:`CorruptEntry`; no other exception
    type escapes for bad input. Let through on purpose, because they say
    nothing about the blob and reporting them as corruption would make callers
    delete a good entry: MemoryError, and ValueError for an ``expect`` that
    is not JSON-serialisable.
    """
    if expect:
        # A non-JSON expectation is a caller bug; it must not be reported as
        # corruption, or the disk tier would delete a perfectly good entry.
        try:
            canonical_json(dict(expect))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"expect is not JSON-serialisable: {exc}") from exc
    try:
        return _decode(key, blob, expect)
    except (CorruptEntry, MemoryError):
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # Rust panics (safetensors) derive from BaseException
        raise CorruptEntry(f"cannot decode entry: {type(exc).__name__}: {exc}") from exc


def _decode(key: str, blob: bytes, expect: Mapping[str, Any] | None) -> Entry:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CorruptEntry(f"payload is a {type(blob).__name__}, not bytes")
    blob = bytes(blob)
    if not blob:
        raise CorruptEntry("payload is empty")
    md = _read_header_metadata(blob)
    if md["format"] != FORMAT_NAME:
        raise CorruptEntry(f"format is {_short(md['format'])!r}, expected {FORMAT_NAME!r}")
    if md["format_version"] != str(FORMAT_VERSION):
        raise CorruptEntry(
            f"format_version is {_short(md['format_version'])!r}, this reader supports {FORMAT_VERSION}"
        )
    if md["key"] != key:
        raise CorruptEntry(f"entry was written for key {_short(md['key'])!r}, not {key!r}")
    try:
        meta = json.loads(md["meta"])
    except ValueError as exc:
        raise CorruptEntry(f"meta is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CorruptEntry("meta is not a JSON object")
    try:
        tensors = safetensors.torch.load(blob)
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptEntry(f"safetensors rejected the payload: {exc}") from exc
    checksum = _checksum(md["meta"], tensors)
    if checksum != md["checksum"]:
        raise CorruptEntry("checksum mismatch (payload bytes were altered)")
    problem = meta_mismatch(meta, expect)
    if problem is not None:
        raise CorruptEntry(f"entry does not match expectation: {problem}")
    return Entry(tensors=tensors, meta=meta)
