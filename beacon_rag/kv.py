"""KV tensors as cached artifacts, and their placement into a transformers cache.

A segment's cache is stored with keys *before* rotary position embedding (DESIGN.md invariant
2). That is what lets one cached document sit at position 40 in one request and at position 900
in the next: RoPE is applied once, when segments are laid out contiguously for a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from beacon_rag.models import LoadedModel


@dataclass
class CompressedKV:
    """Per-layer K/V of the slots a compressor kept for one segment.

    ``keys`` and ``values`` are ``[layers, kv_heads, slots, head_dim]``; keys are un-rotated.
    ``raw_tokens`` is how many text tokens the slots stand for (``slots == raw_tokens`` for
    the exact compressor, about ``raw_tokens / ratio`` for Activation Beacon), which is what
    usage accounting reports as cached input.
    """

    keys: torch.Tensor
    values: torch.Tensor
    raw_tokens: int
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.keys.shape != self.values.shape or self.keys.dim() != 4:
            raise ValueError(
                f"keys {tuple(self.keys.shape)} and values {tuple(self.values.shape)} must both be "
                "[layers, kv_heads, slots, head_dim]"
            )

    @property
    def slots(self) -> int:
        return int(self.keys.shape[2])

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def to(self, dtype: torch.dtype) -> CompressedKV:
        if self.keys.dtype == dtype:
            return self
        return CompressedKV(self.keys.to(dtype), self.values.to(dtype), self.raw_tokens, dict(self.info))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors as the store holds them (contiguous, CPU)."""
        return {"keys": self.keys.contiguous().cpu(), "values": self.values.contiguous().cpu()}

    def describe(self) -> dict[str, Any]:
        """Shape facts written next to the tensors so a loaded entry can be checked against them."""
        return {
            "raw_tokens": self.raw_tokens,
            "shape": list(self.keys.shape),
            "kv_dtype": str(self.keys.dtype).removeprefix("torch."),
            "info": self.info,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], described: dict[str, Any]) -> CompressedKV:
        """Rebuild from stored tensors, refusing anything that disagrees with its description."""
        keys, values = tensors.get("keys"), tensors.get("values")
        if keys is None or values is None:
            raise ValueError(f"stored KV lacks keys or values (has {sorted(tensors)})")
        if list(keys.shape) != list(described["shape"]):
            raise ValueError(f"stored keys shape {tuple(keys.shape)} != described {described['shape']}")
        if str(keys.dtype).removeprefix("torch.") != described["kv_dtype"]:
            raise ValueError(f"stored keys dtype {keys.dtype} != described {described['kv_dtype']}")
        return cls(keys, values, int(described["raw_tokens"]), dict(described.get("info", {})))


def rotary_tables(lm: LoadedModel, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for positions ``start .. start+length-1``, computed by the model's own rotary module.

    Using the model's module (not a re-derivation) keeps scaled RoPE variants and the exact
    float rounding of the forward pass, so a placed cache equals a prefilled one bit for bit.
    """
    positions = torch.arange(start, start + length, device=lm.device)[None]
    probe = torch.empty(0, dtype=lm.dtype, device=lm.device)
    cos, sin = lm.model.model.rotary_emb(probe, positions)
    return cos[0], sin[0]  # [length, head_dim]


def rotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to ``[..., slots, head_dim]`` keys, in the same operation order as transformers."""
    half = keys.shape[-1] // 2
    rotated_half = torch.cat((-keys[..., half:], keys[..., :half]), dim=-1)
    return (keys * cos) + (rotated_half * sin)


class KVContext:
    """The memory of one request so far: segments laid out at contiguous positions.

    Positions are the order in memory (sink, earlier segments, this one), the same rule
    Activation Beacon uses, so exact and compressed segments are placed the same way.
    """

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self._keys: list[torch.Tensor] = []  # rotated, [layers, heads, slots, dim] each
        self._values: list[torch.Tensor] = []
        self._joined: tuple[torch.Tensor, torch.Tensor] | None = None
        self.length = 0
        self.raw_tokens = 0

    def append(self, kv: CompressedKV) -> None:
        """Place ``kv`` right after what is already here."""
        if kv.slots == 0:
            return
        kv = kv.to(self.lm.dtype)
        cos, sin = rotary_tables(self.lm, self.length, kv.slots)
        self._keys.append(rotate(kv.keys.to(self.lm.device), cos, sin))
        self._values.append(kv.values.to(self.lm.device))
        self._joined = None
        self.length += kv.slots
        self.raw_tokens += kv.raw_tokens

    def copy(self) -> KVContext:
        other = KVContext(self.lm)
        other._keys, other._values = list(self._keys), list(self._values)
        other._joined, other.length, other.raw_tokens = self._joined, self.length, self.raw_tokens
        return other

    def joined(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """All rotated keys and values, concatenated along the slot axis (memoized)."""
        if not self._keys:
            return None
        if self._joined is None:
            self._joined = (torch.cat(self._keys, dim=2), torch.cat(self._values, dim=2))
            self._keys, self._values = [self._joined[0]], [self._joined[1]]
        return self._joined

    def layer_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, all rotated keys and values as ``[1, heads, slots, dim]`` (empty lists when empty)."""
        if not self._keys:
            return [], []
        layers = range(self._keys[0].shape[0])
        return ([torch.cat([k[layer] for k in self._keys], dim=1)[None] for layer in layers],
                [torch.cat([v[layer] for v in self._values], dim=1)[None] for layer in layers])

    def to_cache(self) -> Any:
        """A fresh ``DynamicCache`` holding this memory; the model may grow it without harm here."""
        return cache_from_layers(*self.layer_tensors())


def cache_from_layers(keys: list[torch.Tensor], values: list[torch.Tensor]) -> Any:
    """A ``DynamicCache`` holding per-layer ``[1, heads, slots, dim]`` tensors (rotated keys) as given.

    The tensors are handed to the cache as they are: going through ``update`` would copy the whole
    context a second time (it concatenates onto an empty tensor), which is a measurable share of a
    warm request's time to first token.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(keys, values)):
        cache.update(k[:, :, :0], v[:, :, :0], layer)  # creates the layer, holds nothing
        cache.layers[layer].keys, cache.layers[layer].values = k, v
    return cache
