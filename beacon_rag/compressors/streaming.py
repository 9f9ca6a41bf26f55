"""``streaming``: StreamingLLM-style eviction (attention sinks plus a recent window), training-free.

Why it is here: it is the simplest baseline a learned compressor must beat. StreamingLLM
(Xiao et al., 2023) observed that the first few tokens soak up attention ("sinks") and that
keeping them plus the most recent tokens keeps a model fluent; it does not try to keep what
is *relevant*, so anything in the middle of a segment is lost. Comparing against it tells
whether a method carries middle-of-context information at all.

Applied per segment: each cached segment keeps its own first ``sink`` tokens and its last
tokens, ``ceil(n / ratio)`` slots in all. Kept slots keep their un-rotated keys and are placed
contiguously by ``KVContext`` (positions are the order in memory), as every method here is.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from beacon_rag.compressors.base import prefill_pre_rope
from beacon_rag.kv import CompressedKV, KVContext
from beacon_rag.models import LoadedModel

logger = logging.getLogger(__name__)

DEFAULT_SINK = 4  # StreamingLLM's default number of attention-sink tokens


def check_ratio(ratio: Any) -> float | int:
    """Validate a keep-one-in-``ratio`` factor shared by the eviction baselines.

    Any finite real ``ratio >= 1`` is meaningful for eviction (``1`` keeps everything); strings
    such as ``"adapt"`` belong to Activation Beacon and are refused here with a clear message
    rather than failing later inside arithmetic.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise ValueError(f"ratio must be a number >= 1 (e.g. 2, 4, 8), got {ratio!r}")  # noqa: TRY004 - the CLI reports ValueError
    if not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"ratio must be a finite number >= 1 (1 keeps every token), got {ratio!r}")
    return int(ratio) if float(ratio).is_integer() else float(ratio)


def kept_count(n: int, ratio: float) -> int:
    """Slots kept for ``n`` tokens: ``ceil(n / ratio)`` (so a non-empty segment keeps at least one)."""
    return min(n, math.ceil(n / ratio)) if n else 0


def streaming_indices(n: int, kept: int, sink: int) -> list[int]:
    """Token indices StreamingLLM keeps: the first ``min(sink, kept)``, then the most recent."""
    head = min(sink, kept)
    return list(range(head)) + list(range(n - (kept - head), n))


class StreamingCompressor:
    """Keep the first ``sink`` tokens and the most recent ones: ``ceil(n / ratio)`` slots per segment."""

    name = "streaming"

    def __init__(self, ratio: float = 8, sink: int = DEFAULT_SINK) -> None:
        self.ratio = check_ratio(ratio)
        if isinstance(sink, bool) or not isinstance(sink, int) or sink < 0:
            raise ValueError(f"sink must be a non-negative integer, got {sink!r}")
        self.sink = sink

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "ratio": self.ratio, "sink": self.sink}

    def compress(self, lm: LoadedModel, token_ids: list[int], context: KVContext) -> CompressedKV:
        # The full prefill runs first so kept tokens carry what they saw of the whole segment
        # (as StreamingLLM's evicted cache does); only afterwards are slots dropped.
        keys, values = prefill_pre_rope(lm, token_ids, context)
        n = len(token_ids)
        kept = kept_count(n, self.ratio)
        index = torch.tensor(streaming_indices(n, kept, self.sink), dtype=torch.long)
        logger.debug("streaming: %d tokens -> %d slots (sink %d)", n, kept, min(self.sink, kept))
        return CompressedKV(
            keys.index_select(2, index).contiguous(),
            values.index_select(2, index).contiguous(),
            raw_tokens=n,
            info={"method": self.name, "ratio": self.ratio, "sink": min(self.sink, kept)},
        )
