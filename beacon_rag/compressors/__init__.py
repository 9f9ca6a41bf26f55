"""Compression methods behind one protocol, looked up by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from beacon_rag.compressors.base import Compressor, prefill_pre_rope
from beacon_rag.compressors.beacon import BeaconCompressor
from beacon_rag.compressors.exact import ExactCompressor
from beacon_rag.compressors.knorm import KnormCompressor
from beacon_rag.compressors.streaming import StreamingCompressor

_REGISTRY: dict[str, Callable[..., Compressor]] = {
    "exact": ExactCompressor,
    "beacon": BeaconCompressor,
    "streaming": StreamingCompressor,
    "knorm": KnormCompressor,
}


def register_compressor(name: str, factory: Callable[..., Compressor]) -> None:
    """Make a method available to ``get_compressor`` and the CLI's ``--compressor``."""
    _REGISTRY[name] = factory


def available_compressors() -> list[str]:
    return sorted(_REGISTRY)


def parse_ratio(text: str) -> int | str:
    """A ratio as spelled on a command line: an integer, or ``adapt``."""
    if text == "adapt":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"ratio must be an integer or 'adapt', got {text!r}") from None


def compressor_options(ratio: int | str | None, window: int | None, keep: str | None = None,
                       tail: int | None = None) -> dict[str, Any]:
    """Keyword options for ``get_compressor`` from optional command-line values.

    ``keep`` as spelled on a command line: a kind of verbatim tokens, or ``"none"`` (beacons only,
    whatever the plug-in was trained with); absent, the plug-in's own setting applies. ``tail``:
    the newest tokens of each segment kept raw after the beacons (beacon only).
    """
    options: dict[str, Any] = {}
    if ratio is not None:
        options["ratio"] = ratio
    if window is not None:
        options["window"] = window
    if keep is not None:
        options["keep"] = None if keep == "none" else keep
    if tail is not None:
        options["tail"] = tail
    return options


def get_compressor(name: str, **options: Any) -> Compressor:
    """Build a compressor by name; unknown names fail with the list of known ones."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown compressor {name!r}; available: {', '.join(available_compressors())}"
        ) from None
    try:
        return factory(**options)
    except TypeError as err:  # an option this method does not have, e.g. --window for streaming
        raise ValueError(f"compressor {name!r} does not accept these options {sorted(options)}: {err}") from None


__all__ = [
    "BeaconCompressor",
    "Compressor",
    "ExactCompressor",
    "KnormCompressor",
    "StreamingCompressor",
    "available_compressors",
    "compressor_options",
    "get_compressor",
    "parse_ratio",
    "prefill_pre_rope",
    "register_compressor",
]
