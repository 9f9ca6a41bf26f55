"""``exact``: keep every token's K/V. No loss; the reference every other method is judged by."""

from __future__ import annotations

from typing import Any

from beacon_rag.compressors.base import prefill_pre_rope
from beacon_rag.kv import CompressedKV, KVContext
from beacon_rag.models import LoadedModel


class ExactCompressor:
    """Stores the full KV of a segment, so chained placement reproduces a plain prefill."""

    name = "exact"

    def spec(self) -> dict[str, Any]:
        return {"name": self.name}

    def compress(self, lm: LoadedModel, token_ids: list[int], context: KVContext) -> CompressedKV:
        keys, values = prefill_pre_rope(lm, token_ids, context)
        return CompressedKV(keys, values, raw_tokens=len(token_ids))
