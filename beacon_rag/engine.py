"""The engine: messages in, an answer out, every reusable segment compressed at most once.

One request, as data::

    messages -> segments (+ tail) -> for each segment: key -> store (RAM, disk) or compress
             -> KVContext (segments at contiguous positions, RoPE applied once)
             -> prefill the tail, decode, report usage and timings
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from beacon_rag.compressors import Compressor, get_compressor, prefill_pre_rope
from beacon_rag.compressors.beacon import default_options as default_beacon_options
from beacon_rag.generation import (
    Generation,
    GenerationStream,
    SamplingParams,
    SegmentUse,
    Usage,
    decode_tokens,
    now,
)
from beacon_rag.kv import CompressedKV, KVContext
from beacon_rag.models import LoadedModel, beacon_rag_home, load_model
from beacon_rag.segments import (
    PLACEMENTS,
    ROOT_CONTEXT,
    Block,
    KeyContext,
    Message,
    Segment,
    build_segments,
    chain,
    segment_key,
)
from beacon_rag.store import DiskTier, Entry, MemoryTier, TieredStore, redis_tier_from_settings

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES = 1 << 30
DEFAULT_DISK_BYTES = 10 << 30


_SHARED: dict[tuple[Any, ...], Engine] = {}
_SHARED_LOCK = threading.Lock()


class ContextTooLongError(ValueError):
    """The prompt does not fit the model's window: positions past it were never trained."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("BEACON_RAG_CACHE_DIR", beacon_rag_home() / "kv"))


MessageLike = Message | dict[str, Any]


def as_messages(messages: Sequence[MessageLike] | str) -> list[Message]:
    """Accept ``Message`` objects, ``{"role", "content"}`` dicts, or a bare user string."""
    if isinstance(messages, str):
        return [Message("user", messages)]
    out = []
    for m in messages:
        if isinstance(m, Message):
            out.append(m)
        elif isinstance(m, dict) and "role" in m and "content" in m:
            out.append(Message(m["role"], m["content"]))
        else:
            raise TypeError(f"a message must be a Message or a dict with role and content, got {m!r}")
    return out


def rag_messages(
    question: str,
    documents: Sequence[str],
    *,
    system: str | None = "Answer the question using the documents.",
    titles: Sequence[str | None] | None = None,
) -> list[Message]:
    """The canonical RAG prompt: system, then one user turn with one block per document.

    The instruction before the documents is a shared (cached) prefix; each document is its own
    segment; only the question and the generation prompt are prefilled per request.
    """
    titles = list(titles) if titles is not None else [None] * len(documents)
    blocks = [Block("Documents:\n\n", cache=True)]
    for index, (text, title) in enumerate(zip(documents, titles)):
        header = f"[{title}]\n" if title else ""
        blocks.append(Block(f"{header}{text.strip()}\n\n", document=True, id=title or f"doc{index}"))
    blocks.append(Block(f"Question: {question.strip()}"))
    messages = [Message("system", system)] if system else []
    return [*messages, Message("user", blocks)]


@dataclass
class Prepared:
    """A request with its context in place: cached segments laid out, the tail still to prefill."""

    context: KVContext
    uses: list[SegmentUse]
    tail_ids: list[int]


class Engine:
    """Serve requests over a model with content-addressed, compressed KV segments.

    ``placement``: ``"chained"`` compresses each segment after everything before it (prefix
    semantics, exact with the ``exact`` compressor); ``"independent"`` compresses each document
    after the shared prefix only, so documents are reused in any order (approximate; see
    ``repair_tokens``, which re-encodes the first tokens of each later document in place).
    """

    def __init__(
        self,
        model: LoadedModel | str | os.PathLike[str] | None = None,
        *,
        compressor: str | Compressor = "exact",
        compressor_options: dict[str, Any] | None = None,
        placement: str = "chained",
        repair_tokens: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        persist: bool = True,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        disk_bytes: int = DEFAULT_DISK_BYTES,
        kv_dtype: torch.dtype | None = None,
        namespace: str = "",
        redis_url: str | None = None,
        redis_namespace: str | None = None,
        redis_ttl: float | None = None,
    ) -> None:
        """Load the model and open the store (RAM, then disk, then an optional shared Redis).

        ``redis_url`` (default ``$BEACON_RAG_REDIS_URL``; ``""`` disables it) adds a Redis tier
        shared by every worker on the same server and namespace: hits are copied into RAM and
        disk, computed entries are written to it, and a Redis lease makes workers on different
        machines compress each segment once. ``redis_namespace`` (default
        ``$BEACON_RAG_REDIS_NAMESPACE`` or ``"beacon-rag"``) is the key prefix of a deployment;
        ``redis_ttl`` (seconds, default ``$BEACON_RAG_REDIS_TTL`` or none) expires entries nobody
        reads. The server may be down at start or at any time: requests are then served from the
        local tiers, with one warning per outage.
        """
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; use one of {', '.join(PLACEMENTS)}")
        if repair_tokens < 0:
            raise ValueError(f"repair_tokens must be >= 0, got {repair_tokens}")
        self.lm = model if isinstance(model, LoadedModel) else load_model(model)
        if isinstance(compressor, str):
            options = dict(compressor_options or {})
            if compressor == "beacon":
                options = default_beacon_options(self.lm, options)
            self.compressor = get_compressor(compressor, **options)
        else:
            self.compressor = compressor
        if repair_tokens and self.compressor.name != "exact":
            raise ValueError("repair_tokens re-encodes raw tokens in place; it needs the exact compressor")
        self.placement = placement
        self.repair_tokens = repair_tokens
        self.kv_dtype = kv_dtype or self.lm.dtype
        self.key_context = KeyContext(
            model_fingerprint=self.lm.fingerprint,
            tokenizer_digest=self.lm.tokenizer_digest,
            compressor=self.compressor.spec(),
            kv_dtype=str(self.kv_dtype).removeprefix("torch."),
            namespace=namespace,
        )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.store = TieredStore(
            MemoryTier(memory_bytes),
            DiskTier(self.cache_dir, max_bytes=disk_bytes) if persist else None,
            remote=redis_tier_from_settings(redis_url, namespace=redis_namespace, ttl=redis_ttl),
        )
        self.compressions = 0
        self._count_lock = threading.Lock()

    @classmethod
    def shared(cls, model: str | os.PathLike[str] | None = None, *, ratio: int | str | None = None,
               **options: Any) -> Engine:
        """One engine per configuration per process.

        Framework adapters are instantiated many times (per chain, per pydantic copy, per test);
        each must not reload a model or open another store over the same cache directory, so
        they ask for the shared engine of their configuration instead. The cache directory is
        resolved (and the environment read) now, so a changed ``BEACON_RAG_CACHE_DIR`` or
        ``BEACON_RAG_REDIS_URL`` gives a new engine rather than an old one.

        ``ratio`` is the adapters' flat spelling of ``compressor_options={"ratio": ...}`` (what
        their users set as a field); it is refused for ``exact``, which has nothing to compress.
        """
        resolved = dict(options)
        if ratio is not None:
            if resolved.get("compressor", "exact") == "exact":
                raise ValueError("ratio applies to compressing methods (compressor='beacon'), not 'exact'")
            resolved["compressor_options"] = {**(resolved.get("compressor_options") or {}), "ratio": ratio}
        resolved["cache_dir"] = str(Path(resolved.get("cache_dir") or default_cache_dir()).expanduser().resolve())
        if resolved.get("redis_url") is None:
            resolved["redis_url_env"] = os.environ.get("BEACON_RAG_REDIS_URL")
        # A loaded model is its own identity (the object); a path or None is looked up by name.
        if isinstance(model, LoadedModel):
            which: tuple[str, Any] = ("object", id(model))
        else:
            which = ("path", None if model is None else str(model))
        identity = (which,
                    tuple(sorted((name, repr(value)) for name, value in resolved.items())))
        with _SHARED_LOCK:
            engine = _SHARED.get(identity)
            if engine is None:
                resolved.pop("redis_url_env", None)
                engine = cls(model, **resolved)
                _SHARED[identity] = engine
            return engine

    @staticmethod
    def shared_engines() -> list[Engine]:
        """The engines :meth:`shared` has built in this process (a snapshot, oldest first)."""
        with _SHARED_LOCK:
            return list(_SHARED.values())

    @staticmethod
    def release_shared(engine: Engine) -> None:
        """Forget a shared engine and close it, so its RAM tier can be freed (tests, notebooks)."""
        with _SHARED_LOCK:
            for identity, candidate in list(_SHARED.items()):
                if candidate is engine:
                    del _SHARED[identity]
        engine.close()

    # ----------------------------------------------------------------- requests
    def stream(
        self,
        messages: Sequence[MessageLike] | str,
        params: SamplingParams | None = None,
        **sampling: Any,
    ) -> GenerationStream:
        """Answer ``messages``; iterate the returned object for text deltas."""
        params = params or SamplingParams(**_sampling_kwargs(sampling))
        started = now()
        resolved = self.prepare(messages)
        room = self.lm.max_positions - resolved.context.length - len(resolved.tail_ids)
        if room < params.max_new_tokens:
            logger.warning("only %d positions left in the model window; answer capped there", room)
            params = replace(params, max_new_tokens=max(room, 1))
        cache = resolved.context.to_cache()
        state: dict[str, Any] = {}
        first: list[float] = []

        def finish() -> Generation:
            reads = sum(u.raw_tokens for u in resolved.uses if u.source != "computed")
            created = sum(u.raw_tokens for u in resolved.uses if u.source == "computed")
            usage = Usage(
                input_tokens=resolved.context.raw_tokens + len(resolved.tail_ids),
                cache_read_tokens=reads,
                cache_creation_tokens=created,
                output_tokens=len(state["token_ids"]),
            )
            total = now() - started
            return Generation(
                text=state["text"],
                token_ids=list(state["token_ids"]),
                finish_reason=state["finish_reason"],
                usage=usage,
                ttft_s=(first[0] - started) if first else total,
                total_s=total,
                segments=resolved.uses,
                model_name=self.lm.name,
            )

        deltas = decode_tokens(self.lm, cache, resolved.tail_ids, params, lambda: first.append(now()), state)
        return GenerationStream(deltas, finish)

    def generate(
        self,
        messages: Sequence[MessageLike] | str,
        params: SamplingParams | None = None,
        **sampling: Any,
    ) -> Generation:
        """Answer ``messages`` and return the whole ``Generation`` (text, usage, timings)."""
        return self.stream(messages, params, **sampling).collect()

    def ask(self, question: str, documents: Sequence[str], **kwargs: Any) -> Generation:
        """RAG convenience: one question over documents, with the canonical prompt layout."""
        system = kwargs.pop("system", "Answer the question using the documents.")
        return self.generate(rag_messages(question, documents, system=system), **kwargs)

    def prompt_token_ids(self, messages: Sequence[MessageLike] | str) -> list[int]:
        """The exact token sequence a request stands for (segments then tail)."""
        segments, tail = build_segments(self.lm, as_messages(messages))
        return [t for s in segments for t in s.token_ids] + tail.token_ids

    def next_token_logprobs(self, messages: Sequence[MessageLike] | str) -> torch.Tensor:
        """Log-probabilities of the first answer token: a continuous measure of what a cached
        context does to the model, used to compare placements and compressors."""
        resolved = self.prepare(messages)
        cache = resolved.context.to_cache()
        with self.lm.lock, torch.inference_mode():
            out = self.lm.model(input_ids=torch.tensor([resolved.tail_ids], device=self.lm.device),
                                **self.lm.cache_kwargs(cache), use_cache=True, logits_to_keep=1)
        return torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()

    def warm(self, messages: Sequence[MessageLike] | str) -> list[SegmentUse]:
        """Compress and store every cacheable segment of a request without generating."""
        return self.prepare(messages).uses

    def stats(self) -> dict[str, Any]:
        return {
            "model": self.lm.name,
            "compressor": self.compressor.spec(),
            "placement": self.placement,
            "compressions": self.compressions,
            "store": self.store.stats(),
        }

    def close(self) -> None:
        """Finish background copies to disk and close the disk and Redis connections."""
        self.store.close()

    def prepare(self, messages: Sequence[MessageLike] | str) -> Prepared:
        """Find or compress every segment of ``messages`` and lay them out; nothing is generated."""
        segments, tail = build_segments(self.lm, as_messages(messages))
        self._check_window(segments, tail)
        context = KVContext(self.lm)
        uses: list[SegmentUse] = []
        running = ROOT_CONTEXT
        group: tuple[str, KVContext] | None = None  # (parent key, context) shared by a run of documents
        for segment in segments:
            independent = self.placement == "independent" and segment.kind == "document"
            if independent:
                if group is None:
                    group = (running, context.copy())
                parent, compute_context = group
            else:
                group = None
                parent, compute_context = running, context
            placement = "independent" if independent else "chained"
            key = segment_key(self.key_context, placement, parent, segment.token_ids)
            kv, source = self._fetch(key, segment, compute_context, placement, parent)
            if independent and self.repair_tokens and context.length > compute_context.length:
                kv = self._repair(kv, segment.token_ids, context)
            context.append(kv)
            running = chain(running, key)
            uses.append(SegmentUse(key, segment.kind, segment.label, source, kv.raw_tokens, kv.slots, kv.nbytes))
        self._check_positions(context, tail.token_ids)
        return Prepared(context, uses, tail.token_ids)

    # ----------------------------------------------------------------- internals
    def _fetch(
        self, key: str, segment: Segment, context: KVContext, placement: str, parent: str
    ) -> tuple[CompressedKV, str]:
        identity = {**self.key_context.header(placement, parent), "tokens": len(segment.token_ids)}

        def compute() -> Entry:
            started = now()
            kv = self.compressor.compress(self.lm, segment.token_ids, context).to(self.kv_dtype)
            with self._count_lock:
                self.compressions += 1
            logger.debug("compressed %s (%d tokens -> %d slots) in %.3f s", key[:12], kv.raw_tokens,
                         kv.slots, now() - started)
            return Entry(kv.tensors(), {"identity": identity, "kv": kv.describe()})

        entry, source = self.store.get_or_compute(key, compute, expect={"identity": identity})
        try:
            return CompressedKV.from_tensors(entry.tensors, entry.meta["kv"]), source
        except (KeyError, ValueError, TypeError) as err:
            # A structurally valid entry whose tensors disagree with their description: never use it.
            logger.warning("cache entry %s is inconsistent (%s); recomputing", key[:12], err)
            self.store.delete(key)
            entry, source = self.store.get_or_compute(key, compute, expect={"identity": identity})
            return CompressedKV.from_tensors(entry.tensors, entry.meta["kv"]), source

    def _repair(self, kv: CompressedKV, token_ids: list[int], context: KVContext) -> CompressedKV:
        """Re-encode a document's first tokens after the documents now before it (EPIC-style).

        An independently encoded document's first tokens act as an attention sink that never
        saw the other documents; recomputing a few of them in the real context removes most
        of the gap at a cost of ``repair_tokens`` per document.
        """
        count = min(self.repair_tokens, len(token_ids))
        keys, values = prefill_pre_rope(self.lm, token_ids[:count], context)
        return CompressedKV(
            torch.cat([keys.to(kv.keys.dtype), kv.keys[:, :, count:]], dim=2),
            torch.cat([values.to(kv.values.dtype), kv.values[:, :, count:]], dim=2),
            kv.raw_tokens,
            dict(kv.info),
        )

    def _check_window(self, segments: list[Segment], tail: Segment) -> None:
        """Refuse early what cannot fit, before any compute is spent on it.

        With ``exact`` every token is a slot, so the raw token count must fit the window; a
        compressing method is checked on the slots it actually produced (``_check_positions``).
        """
        if self.compressor.name != "exact":
            return
        window = self.lm.max_positions
        for segment in segments:
            if len(segment.token_ids) > window:
                name = f"document {segment.label!r}" if segment.kind == "document" else f"a {segment.kind} segment"
                raise ContextTooLongError(
                    f"{name} has {len(segment.token_ids)} tokens, more than the model window of {window}; "
                    "split it into chunks (for example with a text splitter) or use a compressor"
                )
        total = sum(len(s.token_ids) for s in segments) + len(tail.token_ids)
        if total > window:
            raise ContextTooLongError(f"the prompt has {total} tokens, more than the model window of {window}")

    def _check_positions(self, context: KVContext, tail_ids: list[int]) -> None:
        used = context.length + len(tail_ids)
        if used > self.lm.max_positions:
            raise ContextTooLongError(
                f"the prompt needs {used} positions ({context.length} cached slots + {len(tail_ids)} live "
                f"tokens), more than the model window of {self.lm.max_positions}"
            )


def _sampling_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    if "stop" in options:
        stop = options["stop"]
        options["stop"] = () if stop is None else ((stop,) if isinstance(stop, str) else tuple(stop))
    return options
