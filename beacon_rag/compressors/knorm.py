"""``knorm``: keep the tokens whose keys have the lowest L2 norm, training-free.

Why it is here: Devoto et al. (2024, "A simple and effective L2 norm-based strategy for KV cache
compression") found that keys with a *low* norm tend to receive *high* attention, so the key
norm is a free proxy for importance that needs no attention weights (and so works with any
attention kernel). kvpress ships it as ``KnormPress``. Unlike StreamingLLM it can keep tokens
from the middle of a segment, so it is the natural "content-aware but untrained" baseline.

Scoring: per layer, the norm of each token's key averaged over KV heads; the ``ceil(n / ratio)``
lowest-norm tokens are kept in their original order. Every head of a layer keeps the same
tokens (``CompressedKV`` is dense), but layers may keep different tokens; the slot count is the
same at every layer, which is all that placement needs. Pre-RoPE keys are scored: RoPE rotates
pairs of dimensions, which leaves the vector's L2 norm unchanged, so this equals scoring the
rotated keys as kvpress does.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from beacon_rag.compressors.base import prefill_pre_rope
from beacon_rag.compressors.streaming import check_ratio, kept_count
from beacon_rag.kv import CompressedKV, KVContext
from beacon_rag.models import LoadedModel

logger = logging.getLogger(__name__)


def knorm_indices(keys: torch.Tensor, kept: int) -> torch.Tensor:
    """``[layers, kept]`` indices of the lowest mean-key-norm tokens of each layer, ascending.

    ``keys`` is ``[layers, kv_heads, n, head_dim]``. Norms are computed in float32 so half
    precision caches rank tokens the same way; ties go to the earlier token (stable sort), so
    the choice is deterministic.
    """
    scores = keys.float().norm(dim=-1).mean(dim=1)  # [layers, n]
    order = torch.sort(scores, dim=-1, stable=True).indices[:, :kept]
    return torch.sort(order, dim=-1).values


class KnormCompressor:
    """Keep the ``ceil(n / ratio)`` tokens with the lowest key norm, chosen per layer."""

    name = "knorm"

    def __init__(self, ratio: float = 8) -> None:
        self.ratio = check_ratio(ratio)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "ratio": self.ratio}

    def compress(self, lm: LoadedModel, token_ids: list[int], context: KVContext) -> CompressedKV:
        keys, values = prefill_pre_rope(lm, token_ids, context)
        n = len(token_ids)
        kept = kept_count(n, self.ratio)
        index = knorm_indices(keys, kept)  # [layers, kept]
        gather = index[:, None, :, None].expand(keys.shape[0], keys.shape[1], kept, keys.shape[3])
        logger.debug("knorm: %d tokens -> %d slots per layer", n, kept)
        return CompressedKV(
            torch.gather(keys, 2, gather).contiguous(),
            torch.gather(values, 2, gather).contiguous(),
            raw_tokens=n,
            info={"method": self.name, "ratio": self.ratio},
        )
