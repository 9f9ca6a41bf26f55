"""Compression methods behind one protocol, looked up by name."""

from __future__ import annotations

from typing import Any, Callable

from beacon_rag.compressors.base import Compressor, prefill_pre_rope
from beacon_rag.compressors.exact import ExactCompressor

_REGISTRY: dict[str, Callable[..., Compressor]] = {"exact": ExactCompressor}


def register_compressor(name: str, factory: Callable[..., Compressor]) -> None:
    """Make a method available to ``get_compressor`` and the CLI's ``--compressor``."""
    _REGISTRY[name] = factory


def available_compressors() -> list[str]:
    return sorted(_REGISTRY)


def get_compressor(name: str, **options: Any) -> Compressor:
    """Build a compressor by name; unknown names fail with the list of known ones."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown compressor {name!r}; available: {', '.join(available_compressors())}"
        ) from None
    return factory(**options)


__all__ = [
    "Compressor",
    "ExactCompressor",
    "available_compressors",
    "get_compressor",
    "prefill_pre_rope",
    "register_compressor",
]
