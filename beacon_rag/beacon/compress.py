"""The fast Activation Beacon compression: one ordinary transformers forward per window.

How a segment of ``n`` tokens is compressed after a context of ``L`` slots (window ``W``, ratio ``r``):

* Windows: window ``k`` holds raw tokens ``[kW, min((k+1)W, n))``.
* Interleaving: one beacon follows every ``r`` raw tokens. A last *partial* window of ``m`` tokens gets
  ``ceil(m / r)`` beacons: one after every ``r`` raw tokens plus one after the remainder. The official
  code keeps a partial window raw (it waits for more tokens); we compress it because a cached segment
  is final (nothing more will arrive to fill its window) and short conversation turns should be
  compressed too, not stored raw.
* Positions are the order in memory: the window's sequence starts at the current memory length,
  ``L + sink kept + beacons kept so far``, so beacons move to packed positions when their window ends
  (the official rule; placement with ``KVContext`` uses the same rule).
* Attention is plain causal over ``[memory | window sequence]``: raw tokens and beacons see all of
  memory and everything before them in the window, earlier beacons included ("full coverage").
* Beacon positions use the plug-in's q/k/v(/o) projections, raw positions the base ones; embeddings of
  beacons are the plug-in's ``beacon_embed``; MLP and norms are shared.
* After a window only its beacons' K/V are kept (keys before RoPE); its raw K/V are dropped, and the
  beacons are appended to memory before the next window.
* Sink: when the context is empty (``L == 0``) the first ``s`` raw tokens of the segment also stay raw
  forever (they are in window 0, so window 0's beacons see them as usual, and are then kept as raw
  slots at the head of memory). With a non-empty context the context's own head plays that role.
  The sink is the first ``s`` *raw* tokens; the official code slices the first ``s`` entries of
  window 0's sequence instead, which is the same thing whenever ``s <= r`` (every release uses
  ``s`` of 0 or 1).
* ``r = 0`` keeps every window raw: the result equals an exact prefill.
* Verbatim tokens (``keep_raw``, not in the paper): raw tokens flagged by the caller are kept as
  well, in sequence order among the window's beacons, like extra sink slots. Why: trained beacons
  keep a number's digits but not their order (a pass key 32275 comes back as 23572), and a digit is
  exactly what a model cannot guess from the rest of the text. ``verbatim_mask`` flags them.

Rather than patching the model's classes, the per-position choice of projection is made by forward
hooks on each layer's ``q_proj``/``k_proj``/``v_proj``(/``o_proj``): the hook recomputes the beacon
rows with the plug-in's projection and records the (pre-RoPE) keys and values, as
``compressors.base.prefill_pre_rope`` does. Hooks are removed in ``finally`` so a failed forward never
leaves the shared model altered; the model lock is held throughout (except while gradient
checkpointing recomputes a window during backward: training owns its model).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self

import torch
import torch.utils.checkpoint

from beacon_rag.beacon.plugin import BeaconPlugin, BeaconWeightsError
from beacon_rag.kv import CompressedKV, KVContext, cache_from_layers, rotary_tables, rotate
from beacon_rag.models import LoadedModel

logger = logging.getLogger(__name__)

ALLOWED_RATIOS = (2, 4, 8, 16, 32)

# on_window(start, end, hidden of the raw tokens token_ids[start:end]): see ``compress_segment``.
WindowHook = Callable[[int, int, torch.Tensor], None]


def validate(window: int, ratio: int, sink: int) -> None:
    """Reject configurations the method does not define (same checks as the official ``filter_ratio``)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if isinstance(sink, bool) or not isinstance(sink, int) or sink < 0:
        raise ValueError(f"sink must be a non-negative integer, got {sink!r}")
    if ratio != 0 and ratio not in ALLOWED_RATIOS:
        raise ValueError(
            f"ratio must be one of {', '.join(map(str, ALLOWED_RATIOS))} (or 0 = keep raw, "
            f"or 'adapt'), got {ratio!r}"
        )
    if ratio and window % ratio:
        raise ValueError(f"window {window} must be a multiple of ratio {ratio}")
    if sink > window:
        raise ValueError(f"sink {sink} must not exceed the window {window} (the sink lies in window 0)")


def beacon_layout(raw: int, ratio: int) -> list[bool]:
    """The window's input sequence for ``raw`` tokens: ``True`` where a beacon sits.

    One beacon after every ``ratio`` raw tokens, plus one after a trailing remainder, so ``raw``
    tokens get ``ceil(raw / ratio)`` beacons; ``ratio == 0`` adds none.
    """
    layout: list[bool] = []
    for i in range(raw):
        layout.append(False)
        if ratio and ((i + 1) % ratio == 0 or i == raw - 1):
            layout.append(True)
    return layout


def _windows(n: int, window: int, segment_starts: Sequence[int] = ()) -> Iterable[tuple[int, int]]:
    """Windows of at most ``window`` tokens that restart at every segment start (see ``compress_rows``)."""
    bounds = [0, *segment_starts, n]
    for begin, stop in itertools.pairwise(bounds):
        for start in range(begin, stop, window):
            yield start, min(start + window, stop)


def _check_segment_starts(n: int, segment_starts: Sequence[int]) -> None:
    previous = 0
    for start in segment_starts:
        if not previous < start < n:
            raise ValueError(f"segment starts must increase strictly within (0, {n}), got {list(segment_starts)}")
        previous = start


KEEP_KINDS = ("digits", "numbers")


def verbatim_mask(lm: LoadedModel, token_ids: Sequence[int], kind: str) -> list[bool]:
    """``keep_raw`` flags for one of ``KEEP_KINDS``.

    ``digits``: every token whose text holds a digit. ``numbers``: those and the token right after
    each run of them, which tells the model where the number ends (without it, a kept "7819"
    followed by beacons is often read back as "78190"). Read from the tokenizer's own token
    strings, so it holds for any vocabulary (SmolLM2 splits numbers into single digits, Llama-3
    into groups of up to three).
    """
    if kind not in KEEP_KINDS:
        raise ValueError(f"keep must be one of {', '.join(KEEP_KINDS)}, got {kind!r}")
    digits = [any(ch.isdigit() for ch in token) for token in lm.tokenizer.convert_ids_to_tokens(list(token_ids))]
    if kind == "digits":
        return digits
    return [flag or (i > 0 and digits[i - 1]) for i, flag in enumerate(digits)]


def _sink_in_window(start: int, raw: int, sink: int, context_length: int) -> int:
    return min(sink, raw) if (start == 0 and context_length == 0) else 0


def _kept_in_window(start: int, raw: int, ratio: int, sink: int, context_length: int,
                    keep_raw: Sequence[bool] | None = None) -> int:
    if ratio == 0:
        return raw
    sink_kept = _sink_in_window(start, raw, sink, context_length)
    verbatim = sum(keep_raw[start + sink_kept : start + raw]) if keep_raw is not None else 0
    return sink_kept + -(-raw // ratio) + verbatim


def _check_keep_raw(n: int, keep_raw: Sequence[bool] | None) -> None:
    if keep_raw is not None and len(keep_raw) != n:
        raise ValueError(f"keep_raw has {len(keep_raw)} flags for {n} tokens")


def slot_count(n: int, window: int, ratio: int, sink: int = 0, context_length: int = 0,
               keep_raw: Sequence[bool] | None = None) -> int:
    """Slots a segment of ``n`` tokens occupies once compressed.

    ``n`` for ``ratio == 0``; otherwise ``sink kept + (n // W) * (W // r) + ceil((n % W) / r)`` where
    the sink is ``min(sink, n)`` after an empty context and 0 otherwise, plus the verbatim tokens
    flagged in ``keep_raw`` outside the sink.
    """
    _check_keep_raw(n, keep_raw)
    return sum(_kept_in_window(start, end - start, ratio, sink, context_length, keep_raw)
               for start, end in _windows(n, window))


def peak_positions(n: int, window: int, ratio: int, sink: int = 0, context_length: int = 0,
                   keep_raw: Sequence[bool] | None = None, segment_starts: Sequence[int] = ()) -> int:
    """The highest position count used while compressing (memory so far + the live window sequence)."""
    _check_keep_raw(n, keep_raw)
    memory, peak = context_length, context_length
    for start, end in _windows(n, window, segment_starts):
        raw = end - start
        peak = max(peak, memory + len(beacon_layout(raw, ratio)))
        memory += _kept_in_window(start, raw, ratio, sink, context_length, keep_raw)
    return peak


def choose_ratio(
    n: int,
    context_length: int,
    window: int,
    max_positions: int,
    reserve: int,
    sink: int = 0,
    candidates: Iterable[int] = ALLOWED_RATIOS,
    keep_raw: Sequence[bool] | None = None,
) -> int:
    """``adapt``: the smallest ratio whose compressed segment still fits the model's positions.

    A ratio ``r`` fits when both (a) the compression itself stays within ``max_positions``
    (memory so far plus the live window sequence, ``peak_positions``) and (b) the context, the
    compressed segment and ``reserve`` positions for what follows (question, answer) fit:
    ``context_length + slot_count(n, r) + reserve <= max_positions``. This is the exact form of the
    official rule of thumb "a ratio r supports about (max_positions - W) * r + W tokens". Ratios
    that do not divide the window are skipped, and verbatim tokens (``keep_raw``) count as slots. If
    none fits, the largest is used (as the official code does) and a warning is logged: the engine's
    own position check then reports the overflow.
    """
    usable = sorted(r for r in candidates if r and window % r == 0)
    if not usable:
        raise ValueError(f"no ratio among {tuple(candidates)} divides the window {window}")
    for ratio in usable:
        fits_while_compressing = peak_positions(n, window, ratio, sink, context_length, keep_raw) <= max_positions
        final = context_length + slot_count(n, window, ratio, sink, context_length, keep_raw) + reserve
        if fits_while_compressing and final <= max_positions:
            return ratio
    logger.warning(
        "no beacon ratio fits %d tokens after %d slots within %d positions (reserve %d); using %d",
        n, context_length, max_positions, reserve, usable[-1],
    )
    return usable[-1]


class _BeaconRouting:
    """Forward hooks that send beacon rows through the plug-in's projections and record K/V.

    ``set_mask`` names the beacon rows of the next forward. Keys and values are recorded after the
    substitution, i.e. exactly what attention consumes, before RoPE.
    """

    def __init__(self, lm: LoadedModel, plugin: BeaconPlugin) -> None:
        self.lm, self.plugin = lm, plugin
        self.beacon_rows: torch.Tensor | None = None
        self.keys: list[torch.Tensor | None] = [None] * lm.num_layers
        self.values: list[torch.Tensor | None] = [None] * lm.num_layers
        self._handles: list[Any] = []

    def set_mask(self, is_beacon: torch.Tensor) -> None:
        rows = torch.nonzero(is_beacon, as_tuple=False).flatten()
        self.beacon_rows = rows if rows.numel() else None
        self.keys = [None] * self.lm.num_layers
        self.values = [None] * self.lm.num_layers

    def _hook(self, layer: int, which: str) -> Callable[..., torch.Tensor]:
        beacon_proj = self.plugin.layers[layer].projection(which)

        def hook(_module: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            rows = self.beacon_rows
            if rows is not None and beacon_proj is not None:
                replaced = beacon_proj(args[0].index_select(1, rows))
                out = out.index_copy(1, rows, replaced)
            if which == "k":
                self.keys[layer] = out
            elif which == "v":
                self.values[layer] = out
            return out

        return hook

    def __enter__(self) -> Self:
        try:
            for index, layer in enumerate(self.lm.model.model.layers):
                attn = layer.self_attn
                for which in ("q", "k", "v", "o"):
                    if which == "o" and not self.plugin.with_o:
                        continue
                    module = getattr(attn, f"{which}_proj")
                    self._handles.append(module.register_forward_hook(self._hook(index, which)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def check_fit(lm: LoadedModel, plugin: BeaconPlugin, peak: int) -> None:
    """Fail early and clearly where the hooks would otherwise fail deep inside a forward pass.

    Also refuses models whose attention uses a sliding window shorter than the compression's
    span: transformers would then mask memory the method defines as visible.
    """
    c = plugin.config
    if (c["hidden_size"], c["num_layers"], c["num_kv_heads"], c["head_dim"]) != (
        int(lm.config.hidden_size), lm.num_layers, lm.num_kv_heads, lm.head_dim
    ):
        raise BeaconWeightsError(
            f"beacon plug-in (hidden {c['hidden_size']}, {c['num_layers']} layers, {c['num_kv_heads']} kv heads, "
            f"head_dim {c['head_dim']}) does not fit model {lm.name!r}"
        )
    param = plugin.beacon_embed
    if param.dtype != lm.dtype or param.device != lm.device:
        raise ValueError(
            f"beacon plug-in is {param.dtype} on {param.device} but the model is {lm.dtype} on {lm.device}: "
            "move it first, e.g. plugin.to(device=lm.device, dtype=lm.dtype)"
        )
    sliding = getattr(lm.config, "sliding_window", None)
    active = sliding is not None and (lm.family != "qwen2" or getattr(lm.config, "use_sliding_window", False))
    if active and peak > int(sliding):
        raise NotImplementedError(
            f"model {lm.name!r} uses sliding-window attention ({sliding}) shorter than this compression "
            f"spans ({peak} positions); beacon compression assumes full attention over memory"
        )
    if peak > lm.max_positions:
        logger.warning("beacon compression reaches position %d, beyond the model's %d trained positions",
                       peak, lm.max_positions)


def _heads(flat: torch.Tensor, rows: torch.Tensor, lm: LoadedModel) -> torch.Tensor:
    """[B, T, kv_heads*dim] projection output, selected rows -> [B, kv_heads, rows, dim]."""
    picked = flat.index_select(1, rows)
    return picked.view(picked.shape[0], picked.shape[1], lm.num_kv_heads, lm.head_dim).transpose(1, 2)


def _window_step(
    lm: LoadedModel,
    plugin: BeaconPlugin,
    is_beacon: torch.Tensor,
    raw_positions: torch.Tensor,
    keep: torch.Tensor,
    memory: int,
    ratio: int,
    grow_memory: bool,
    embeds: torch.Tensor,
    *memory_tensors: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One window's forward over ``[memory | window sequence]``, as a pure function of tensors.

    Pure (memory in, memory out; hooks entered and left inside) so that gradient checkpointing can
    run it again during backward, when ``compress_segment`` and its hooks are long gone.
    Every tensor has the batch axis first (rows of one batch share the window layout). Returns:
    the raw tokens' final hidden states, the kept rows' pre-RoPE keys (one tensor per
    layer) and values, and, unless this is the last window, the next window's memory: the window's
    raw entries dropped and what is kept placed at packed positions (``ratio == 0`` keeps
    everything where the forward put it).
    """
    layers = lm.num_layers
    cache = cache_from_layers(list(memory_tensors[:layers]), list(memory_tensors[layers:]))
    with _BeaconRouting(lm, plugin) as routing:
        routing.set_mask(is_beacon)
        out = lm.model.model(inputs_embeds=embeds, **lm.cache_kwargs(cache), use_cache=True)
    hidden = out.last_hidden_state.index_select(1, raw_positions)
    kept_keys = [_heads(routing.keys[layer], keep, lm) for layer in range(layers)]
    kept_values = [_heads(routing.values[layer], keep, lm) for layer in range(layers)]
    if not grow_memory:
        return (hidden, *kept_keys, *kept_values)
    if ratio == 0:
        next_keys = [cache.layers[layer].keys for layer in range(layers)]
        next_values = [cache.layers[layer].values for layer in range(layers)]
    else:
        cos, sin = rotary_tables(lm, memory, int(keep.numel()))
        next_keys = [rotate(k, cos, sin) for k in kept_keys]
        next_values = list(kept_values)
        if memory_tensors:
            next_keys = [torch.cat([m, k], dim=2) for m, k in zip(memory_tensors[:layers], next_keys)]
            next_values = [torch.cat([m, v], dim=2) for m, v in zip(memory_tensors[layers:], next_values)]
    return (hidden, *kept_keys, *kept_values, *next_keys, *next_values)


def compress_segment(
    lm: LoadedModel,
    plugin: BeaconPlugin,
    token_ids: list[int],
    context: KVContext,
    *,
    window: int,
    ratio: int,
    sink: int = 0,
    grad: bool = False,
    on_window: WindowHook | None = None,
    checkpoint: bool = False,
    keep_raw: Sequence[bool] | None = None,
) -> CompressedKV:
    """Compress ``token_ids`` placed after ``context`` (left unmodified) into sink + beacon slots.

    ``grad=False`` runs under ``torch.inference_mode`` and returns CPU tensors, as the exact
    compressor does; ``grad=True`` keeps the autograd graph through every window (gradients reach
    the plug-in's parameters through the cached beacon K/V of earlier windows), which is what
    training needs, and leaves the tensors on the model's device.

    ``on_window(start, end, hidden)`` is called after each window with the final hidden states of
    its raw tokens ``token_ids[start:end]`` (``[1, end - start, hidden]``, in the autograd graph when
    ``grad``): the paper's training scores every raw token there, where it sees earlier windows only
    through their beacons. Inference passes nothing and pays nothing.

    ``checkpoint=True`` (with ``grad``) is gradient checkpointing at window granularity: each
    window's activations are dropped after its forward and recomputed during backward from the
    window's saved inputs (its embeddings and the memory before it), trading about one more
    forward for activation memory that no longer grows with the number of windows times layers.

    ``keep_raw`` (one flag per token) also keeps the flagged raw tokens' slots (verbatim tokens, as
    ``verbatim_mask`` gives): they sit in sequence order among the beacons.
    """
    validate(window, ratio, sink)
    n = len(token_ids)
    _check_keep_raw(n, keep_raw)
    if n == 0:
        empty = torch.empty(lm.num_layers, lm.num_kv_heads, 0, lm.head_dim, dtype=lm.dtype)
        verbatim = 0 if keep_raw is not None else None
        return CompressedKV(empty, empty.clone(), raw_tokens=0, info=_info(window, ratio, 0, 0, verbatim))
    ids = torch.tensor([token_ids], dtype=torch.long, device=lm.device)
    keys, values, sink_kept, beacons = compress_rows(
        lm, plugin, ids, context.layer_tensors(), context.length, window=window, ratio=ratio, sink=sink,
        grad=grad, on_window=on_window, checkpoint=checkpoint, keep_raw=keep_raw,
    )
    keys, values = keys[:, 0], values[:, 0]
    if not grad:
        keys, values = keys.cpu(), values.cpu()
    logger.debug("beacon-compressed %d tokens into %d slots (ratio %s, window %d, sink %d)",
                 n, keys.shape[2], ratio, window, sink_kept)
    verbatim = (keys.shape[2] - sink_kept - beacons if ratio else 0) if keep_raw is not None else None
    return CompressedKV(keys, values, raw_tokens=n, info=_info(window, ratio, sink_kept, beacons, verbatim))


def compress_rows(
    lm: LoadedModel,
    plugin: BeaconPlugin,
    ids: torch.Tensor,
    memory_tensors: tuple[list[torch.Tensor], list[torch.Tensor]],
    context_length: int,
    *,
    window: int,
    ratio: int,
    sink: int = 0,
    grad: bool = False,
    on_window: WindowHook | None = None,
    checkpoint: bool = False,
    keep_raw: Sequence[bool] | None = None,
    segment_starts: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The window loop over a batch: ``ids`` is ``[B, n]``, every row of the same length.

    Rows of equal length share the window layout, so one forward per window serves the whole
    batch: training on a GPU is bound by the number of kernel launches per window, not by the
    model's arithmetic, and a batch of B rows costs about the launches of one. ``memory_tensors``
    are the per-layer rotated keys and values of what precedes (``[B, heads, slots, dim]``; empty
    lists for nothing) and ``context_length`` their slot count. Returns keys and values as
    ``[layers, B, kv_heads, slots, head_dim]`` (pre-RoPE, on the model's device), the sink slots
    kept and the beacon count. ``compress_segment`` is the one-row case with its checks. ``keep_raw``
    flags verbatim tokens, the same for every row (see the module's docstring).

    ``segment_starts`` (strictly increasing, inside ``(0, n)``) restart the windows there, so that
    one call over several segments gives exactly what compressing each segment after the memory
    of the ones before gives: the engine's layout, where every document and every conversation
    turn is its own segment and ends in its own partial window. Training uses it so the beacons
    learn the memory they will be read from.
    """
    validate(window, ratio, sink)
    rows, n = ids.shape
    _check_segment_starts(n, segment_starts)
    check_fit(lm, plugin, peak_positions(n, window, ratio, sink, context_length, keep_raw, segment_starts))
    verbatim = None if keep_raw is None or not ratio else torch.tensor(list(keep_raw), dtype=torch.bool)
    device = lm.device
    embed_tokens = lm.model.model.embed_tokens
    kept_keys: list[list[torch.Tensor]] = [[] for _ in range(lm.num_layers)]
    kept_values: list[list[torch.Tensor]] = [[] for _ in range(lm.num_layers)]
    sink_kept = verbatim_kept = 0
    layers = lm.num_layers
    mode = torch.enable_grad() if grad else torch.inference_mode()
    with lm.lock, mode:
        beacon_embed = plugin.beacon_embed.to(lm.dtype)[None].expand(rows, -1, -1)  # one per row, every window
        memory_keys, memory_values = memory_tensors
        memory = context_length
        windows = list(_windows(n, window, segment_starts))
        for number, (start, end) in enumerate(windows):
            raw = end - start
            layout = beacon_layout(raw, ratio)
            is_beacon = torch.tensor(layout, dtype=torch.bool, device=device)
            # Row i of the window's input is raw token source[i] or, at beacons, the beacon embedding
            # (index ``raw`` of ``table``): a gather keeps the beacon embedding in the autograd graph.
            raw_positions = torch.nonzero(~is_beacon).flatten()
            beacon_positions = torch.nonzero(is_beacon).flatten()
            source = torch.full((len(layout),), raw, dtype=torch.long, device=device)
            source[raw_positions] = torch.arange(raw, device=device)
            table = torch.cat([embed_tokens(ids[:, start:end]), beacon_embed], dim=1)
            if ratio == 0:
                keep = torch.arange(len(layout), device=device)
            else:
                window_sink = _sink_in_window(start, raw, sink, context_length)
                sink_kept += window_sink
                keep = torch.cat([raw_positions[:window_sink], beacon_positions])
                if verbatim is not None:
                    flagged = torch.nonzero(verbatim[start + window_sink : end]).flatten().to(device) + window_sink
                    # Sorted: memory keeps sequence order, so a kept digit sits between its beacons.
                    keep = torch.sort(torch.cat([keep, raw_positions[flagged]])).values
                    verbatim_kept += int(flagged.numel())
            step = functools.partial(
                _window_step, lm, plugin, is_beacon, raw_positions, keep, memory, ratio,
                number + 1 < len(windows),  # the last window's memory is never attended to
            )
            inputs = (table[:, source], *memory_keys, *memory_values)
            if grad and checkpoint:
                outputs = torch.utils.checkpoint.checkpoint(step, *inputs, use_reentrant=False)
            else:
                outputs = step(*inputs)
            hidden, rest = outputs[0], outputs[1:]
            if on_window is not None:
                on_window(start, end, hidden)
            for layer in range(layers):
                kept_keys[layer].append(rest[layer])
                kept_values[layer].append(rest[layers + layer])
            if len(rest) > 2 * layers:
                memory_keys, memory_values = list(rest[2 * layers : 3 * layers]), list(rest[3 * layers :])
            memory += int(keep.numel())
        keys = torch.stack([torch.cat(chunks, dim=2) for chunks in kept_keys])
        values = torch.stack([torch.cat(chunks, dim=2) for chunks in kept_values])
    beacons = memory - context_length - sink_kept - verbatim_kept if ratio else 0
    return keys, values, sink_kept, beacons


def _info(window: int, ratio: int, sink_kept: int, beacons: int, verbatim: int | None) -> dict[str, Any]:
    info = {"compressor": "beacon", "window": window, "ratio": ratio, "sink": sink_kept, "beacons": beacons}
    if verbatim is not None:  # only with ``keep_raw``: plain compressions describe themselves as before
        info["verbatim"] = verbatim
    return info

