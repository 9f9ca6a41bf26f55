"""Decoding after the cached context: sampling, stop strings, streaming, usage and timings."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from beacon_rag.models import LoadedModel


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` is greedy (deterministic, what tests compare)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


@dataclass
class Usage:
    """Token accounting in the vocabulary of LangChain's ``usage_metadata``.

    ``cache_read_tokens`` are prompt tokens served from a cached segment, ``cache_creation_tokens``
    prompt tokens compressed and stored by this request; the rest of the input (the tail) was
    prefilled live.
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_tokens": self.total_tokens}


@dataclass
class SegmentUse:
    """What one segment of a request cost: where its KV came from and how big it is."""

    key: str
    kind: str
    label: str | None
    source: str  # "memory" | "disk" | "redis" | "computed"
    raw_tokens: int
    slots: int
    nbytes: int = 0


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    usage: Usage
    ttft_s: float
    total_s: float
    segments: list[SegmentUse] = field(default_factory=list)
    model_name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage.as_dict(),
            "ttft_s": self.ttft_s,
            "total_s": self.total_s,
            "model_name": self.model_name,
            "segments": [asdict(s) for s in self.segments],
        }


def pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Greedy argmax, or temperature / top-k / top-p sampling from one row of logits."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    scores = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1:
        ordered, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) >= params.top_p  # keep the first over p
        scores = scores.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class _StopText:
    """Turns a growing list of token ids into safe text deltas, honouring stop strings.

    Text that could still become the start of a stop string, or an incomplete UTF-8 character,
    is held back until it is decided, so a streaming caller never sees text a stop would cut.
    """

    def __init__(self, lm: LoadedModel, stop: Sequence[str]) -> None:
        self.lm = lm
        self.stop = tuple(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.emitted = 0
        self.text = ""
        self.stopped = False

    def feed(self, token_ids: list[int]) -> str:
        self.text = self.lm.decode(token_ids)
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.stopped = True
            return self._emit(len(self.text))
        safe = len(self.text) - self.hold
        while safe > self.emitted and self.text[safe - 1] == "\ufffd":
            safe -= 1
        return self._emit(safe)

    def finish(self) -> str:
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        delta = self.text[self.emitted : upto]
        self.emitted = upto
        return delta


class GenerationStream:
    """Iterate text deltas; after the loop, ``result`` holds the full ``Generation``.

    One object serves both streaming and blocking callers, so the two paths cannot drift apart.
    """

    def __init__(self, deltas: Iterator[str], finish: Callable[[], Generation]) -> None:
        self._deltas = deltas
        self._finish = finish
        self.result: Generation | None = None

    def __iter__(self) -> Iterator[str]:
        yield from self._deltas
        self.result = self._finish()

    def collect(self) -> Generation:
        for _ in self:
            pass
        assert self.result is not None
        return self.result


async def stream_in_thread(
    start: Callable[[], tuple[Iterable[str], GenerationStream]],
) -> AsyncIterator[str | Generation]:
    """Run a generation in a worker thread and yield its deltas, then its ``Generation``, to asyncio.

    Why: framework adapters expose async streaming, and a forward pass must never block the event
    loop. ``start`` (called in the worker) returns the deltas to forward (the stream itself, or a
    wrapper that adds e.g. a deadline) and the stream whose ``result`` ends the iteration. A consumer
    that stops early sets a flag the worker checks before its next token, so no orphaned
    generation keeps the model busy.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancelled = threading.Event()

    def work() -> None:
        try:
            deltas, stream = start()
            for delta in deltas:
                if cancelled.is_set():
                    return
                loop.call_soon_threadsafe(queue.put_nowait, ("delta", delta))
            loop.call_soon_threadsafe(queue.put_nowait, ("done", stream.result))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, re-raised there
            loop.call_soon_threadsafe(queue.put_nowait, ("error", err))

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "error":
                raise value
            yield value
            if kind == "done":
                break
    finally:
        cancelled.set()  # the worker stops before its next token; nothing waits on it here
        del worker


def decode_tokens(
    lm: LoadedModel,
    cache: Any,
    tail_ids: list[int],
    params: SamplingParams,
    on_first_token: Callable[[], None],
    state: dict[str, Any],
) -> Iterator[str]:
    """Prefill the tail on top of ``cache``, then decode; yields text deltas.

    ``state`` receives ``token_ids`` and ``finish_reason`` for the caller's ``Generation``.
    Positions continue from the cache length, i.e. the order in memory.
    """
    generator = None
    if params.temperature > 0:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(params.seed if params.seed is not None else torch.seed())
    eos = lm.eos_token_ids
    text = _StopText(lm, params.stop)
    produced: list[int] = []
    state.update(token_ids=produced, finish_reason="length")
    next_input = torch.tensor([tail_ids], dtype=torch.long, device=lm.device)
    for step in range(params.max_new_tokens):
        with lm.lock, torch.inference_mode():
            out = lm.model(input_ids=next_input, **lm.cache_kwargs(cache), use_cache=True, logits_to_keep=1)
        token = pick_token(out.logits[0, -1], params, generator)
        if step == 0:
            on_first_token()
        if token in eos:
            state["finish_reason"] = "stop"
            break
        produced.append(token)
        delta = text.feed(produced)
        if delta:
            yield delta
        if text.stopped:
            state["finish_reason"] = "stop"
            break
        next_input = torch.tensor([[token]], dtype=torch.long, device=lm.device)
    tail = text.finish()
    if tail:
        yield tail
    state["text"] = text.text


def now() -> float:
    return time.perf_counter()
