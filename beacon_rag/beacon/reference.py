"""A slow reference for Activation Beacon compression, written from the method's definitions.

It shares nothing with the fast path except the rotary tables: no transformers forward, no cache
object, no hooks. Each window is an explicit list of tokens (raw ids and beacons), each layer is
computed by hand from the model's weights (RMSNorm, per-position choice of base or beacon
projections, RoPE, softmax attention under an explicit boolean mask with GQA head repetition,
output projection, gated MLP), and memory is an explicit list of kept pre-RoPE keys and values
that is re-rotated to its packed positions at every window. Its only purpose is to be obviously
right, so the fast path (``compress.compress_segment``) can be tested against it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from beacon_rag.beacon.compress import validate
from beacon_rag.beacon.plugin import BeaconPlugin
from beacon_rag.kv import CompressedKV, KVContext, rotary_tables
from beacon_rag.models import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    """One entry of a window's input sequence: a raw token or a beacon."""

    beacon: bool
    token: int | None = None


def window_items(tokens: list[int], ratio: int) -> list[_Item]:
    """Raw tokens with a beacon after every ``ratio`` of them and after a trailing remainder."""
    items: list[_Item] = []
    for i, token in enumerate(tokens):
        items.append(_Item(False, token))
        if ratio and ((i + 1) % ratio == 0 or i == len(tokens) - 1):
            items.append(_Item(True))
    return items


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return norm.weight * normed.to(x.dtype)


def _linear(x: torch.Tensor, proj: torch.nn.Linear) -> torch.Tensor:
    return F.linear(x, proj.weight, proj.bias)


def _choose(x: torch.Tensor, is_beacon: torch.Tensor, base: torch.nn.Linear,
            beacon: torch.nn.Linear | None) -> torch.Tensor:
    """Row i through ``beacon`` where ``is_beacon[i]`` (and a beacon projection exists), else ``base``."""
    plain = _linear(x, base)
    if beacon is None:
        return plain
    return torch.where(is_beacon[:, None], _linear(x, beacon), plain)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [heads, t, d]; cos/sin: [t, d]. Rotate pairs (i, i + d/2) by the position's angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def reference_compress(
    lm: LoadedModel,
    plugin: BeaconPlugin,
    token_ids: list[int],
    context: KVContext,
    *,
    window: int,
    ratio: int,
    sink: int = 0,
) -> CompressedKV:
    """Same contract and output as ``compress_segment``, computed the slow, explicit way."""
    validate(window, ratio, sink)
    if lm.config.hidden_act != "silu":
        raise NotImplementedError(f"reference MLP implements silu only, model uses {lm.config.hidden_act}")
    decoder = lm.model.model
    heads, kv_heads, head_dim = int(lm.config.num_attention_heads), lm.num_kv_heads, lm.head_dim
    groups = heads // kv_heads
    n, context_length = len(token_ids), context.length
    joined = context.joined()  # context keys are already rotated at positions 0..L-1 and never move
    kept_k: list[list[torch.Tensor]] = [[] for _ in range(lm.num_layers)]  # pre-RoPE [kv_heads, d] rows
    kept_v: list[list[torch.Tensor]] = [[] for _ in range(lm.num_layers)]
    sink_total = 0

    with lm.lock, torch.no_grad():
        for start in range(0, n, window):
            tokens = token_ids[start : start + window]
            items = window_items(tokens, ratio)
            t = len(items)
            past = context_length + len(kept_k[0])  # positions taken by memory
            total = past + t
            is_beacon = torch.tensor([item.beacon for item in items], device=lm.device)
            # Explicit causal mask over [memory | window]: query i sits at memory index past + i.
            allowed = torch.zeros(t, total, dtype=torch.bool, device=lm.device)
            for i in range(t):
                allowed[i, : past + i + 1] = True
            hidden = torch.stack([
                plugin.beacon_embed[0].to(lm.dtype) if item.beacon else decoder.embed_tokens.weight[item.token]
                for item in items
            ])
            cos, sin = rotary_tables(lm, 0, total)
            window_k: list[torch.Tensor] = []
            window_v: list[torch.Tensor] = []
            for index, layer in enumerate(decoder.layers):
                attn, beacon = layer.self_attn, plugin.layers[index]
                x = _rms_norm(hidden, layer.input_layernorm)
                q = _choose(x, is_beacon, attn.q_proj, beacon.beacon_q_proj).view(t, heads, head_dim).transpose(0, 1)
                k = _choose(x, is_beacon, attn.k_proj, beacon.beacon_k_proj).view(t, kv_heads, head_dim).transpose(0, 1)
                v = _choose(x, is_beacon, attn.v_proj, beacon.beacon_v_proj).view(t, kv_heads, head_dim).transpose(0, 1)
                window_k.append(k)
                window_v.append(v)
                parts_k, parts_v = [], []
                if joined is not None:
                    parts_k.append(joined[0][index])
                    parts_v.append(joined[1][index])
                if kept_k[index]:
                    mem_k = torch.stack(kept_k[index], dim=1)  # [kv_heads, kept, d], pre-RoPE
                    parts_k.append(_rope(mem_k, cos[context_length:past], sin[context_length:past]))
                    parts_v.append(torch.stack(kept_v[index], dim=1))
                parts_k.append(_rope(k, cos[past:], sin[past:]))
                parts_v.append(v)
                keys = torch.cat(parts_k, dim=1).repeat_interleave(groups, dim=0)
                values = torch.cat(parts_v, dim=1).repeat_interleave(groups, dim=0)
                q = _rope(q, cos[past:], sin[past:])
                scores = (q @ keys.transpose(1, 2)) / math.sqrt(head_dim)
                scores = scores.masked_fill(~allowed, float("-inf"))
                probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
                out = (probs @ values).transpose(0, 1).reshape(t, heads * head_dim)
                hidden = hidden + _choose(out, is_beacon, attn.o_proj, beacon.beacon_o_proj)
                y = _rms_norm(hidden, layer.post_attention_layernorm)
                mlp = layer.mlp
                hidden = hidden + _linear(F.silu(_linear(y, mlp.gate_proj)) * _linear(y, mlp.up_proj), mlp.down_proj)

            # Which entries of this window stay in memory, in memory order.
            raw_rows = [i for i, item in enumerate(items) if not item.beacon]
            if ratio == 0:
                keep = list(range(t))
            else:
                sink_here = min(sink, len(raw_rows)) if (start == 0 and context_length == 0) else 0
                sink_total += sink_here
                keep = raw_rows[:sink_here] + [i for i, item in enumerate(items) if item.beacon]
            for index in range(lm.num_layers):
                for row in keep:
                    kept_k[index].append(window_k[index][:, row])
                    kept_v[index].append(window_v[index][:, row])

        slots = len(kept_k[0])
        if slots == 0:
            empty = torch.empty(lm.num_layers, kv_heads, 0, head_dim, dtype=lm.dtype)
            return CompressedKV(empty, empty.clone(), raw_tokens=n)
        keys = torch.stack([torch.stack(rows, dim=1) for rows in kept_k]).cpu()
        values = torch.stack([torch.stack(rows, dim=1) for rows in kept_v]).cpu()
    beacons = slots - sink_total if ratio else 0
    info = {"compressor": "beacon", "window": window, "ratio": ratio, "sink": sink_total, "beacons": beacons}
    return CompressedKV(keys, values, raw_tokens=n, info=info)
