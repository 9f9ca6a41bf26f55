"""The compressor protocol, and the one forward pass every compressor builds on.

A compressor turns a segment's token ids, read in the context of what precedes it, into a
``CompressedKV``. It knows nothing of the store or of keys beyond its own ``spec()``, which
names everything about it that changes its output (DESIGN.md invariant 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch

from beacon_rag.kv import CompressedKV, KVContext
from beacon_rag.models import LoadedModel

PREFILL_CHUNK_TOKENS = 1024


@runtime_checkable
class Compressor(Protocol):
    """One compression method: one small class, one ``compress`` method (as kvpress does)."""

    name: str

    def spec(self) -> dict[str, Any]:
        """JSON-able identity of this configuration; part of every cache key it produces."""
        ...

    def compress(self, lm: LoadedModel, token_ids: list[int], context: KVContext) -> CompressedKV:
        """KV for ``token_ids`` placed right after ``context`` (which the method must not modify)."""
        ...


@contextmanager
def _capture_projections(lm: LoadedModel) -> Iterator[tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]]:
    """Record each layer's k_proj / v_proj outputs: the keys as they are *before* RoPE.

    Hooking the projections rather than un-rotating the cache's keys keeps stored keys exact
    (an inverse rotation would add rounding error to every cached key).
    """
    keys: list[list[torch.Tensor]] = [[] for _ in range(lm.num_layers)]
    values: list[list[torch.Tensor]] = [[] for _ in range(lm.num_layers)]
    handles = []
    for index, layer in enumerate(lm.model.model.layers):
        attn = layer.self_attn
        handles.append(attn.k_proj.register_forward_hook(lambda _m, _i, out, i=index: keys[i].append(out)))
        handles.append(attn.v_proj.register_forward_hook(lambda _m, _i, out, i=index: values[i].append(out)))
    try:
        yield keys, values
    finally:
        for handle in handles:
            handle.remove()


def _to_heads(chunks: list[torch.Tensor], lm: LoadedModel) -> torch.Tensor:
    """[1, n, heads*dim] projection outputs -> [heads, n, dim]."""
    flat = torch.cat(chunks, dim=1)[0]
    return flat.view(flat.shape[0], lm.num_kv_heads, lm.head_dim).transpose(0, 1)


def prefill_pre_rope(
    lm: LoadedModel,
    token_ids: list[int],
    context: KVContext,
    chunk_tokens: int = PREFILL_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``token_ids`` after ``context`` and return their un-rotated K and V, ``[L, H, n, D]``.

    The prefill goes in chunks so a long document never materialises an n x n attention matrix
    at once; only the decoder runs (no LM head), because a compressor needs K/V, not logits.
    """
    if not token_ids:
        empty = torch.empty(lm.num_layers, lm.num_kv_heads, 0, lm.head_dim, dtype=lm.dtype)
        return empty, empty.clone()
    cache = context.to_cache()
    ids = torch.tensor([token_ids], dtype=torch.long, device=lm.device)
    with lm.lock, torch.inference_mode(), _capture_projections(lm) as (keys, values):
        for start in range(0, ids.shape[1], chunk_tokens):
            lm.model.model(input_ids=ids[:, start : start + chunk_tokens], **lm.cache_kwargs(cache), use_cache=True)
    return (
        torch.stack([_to_heads(k, lm) for k in keys]).cpu(),
        torch.stack([_to_heads(v, lm) for v in values]).cpu(),
    )
