"""What the chat model and the LLM share: settings, the lazily built shared engine, usage mapping.

Why engines are shared per configuration: LangChain builds model objects freely (the unit
suite constructs ten in a loop, ``bind``/``with_config`` copy them), but an engine owns a RAM
cache tier and a disk store; two engines over one cache folder would each keep their own RAM
copy of the same KV. So the object stays a cheap settings holder and the engine is looked up.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from beacon_rag import Engine, Generation, Message, SamplingParams, stream_in_thread
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from langchain_beacon_rag.messages import DocumentRegistry


def usage_metadata(generation: Generation) -> dict[str, Any]:
    """LangChain's ``UsageMetadata``: cache_read / cache_creation are the engine's real KV reuse."""
    usage = generation.usage
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "input_token_details": {
            "cache_read": usage.cache_read_tokens,
            "cache_creation": usage.cache_creation_tokens,
        },
    }


def generation_metadata(generation: Generation, requested_model: str | None = None,
                        indexed: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per-request details beyond usage: where each cached segment came from, and timings.

    ``model_name`` is the loaded model's name, or the model a caller named per call
    (``invoke(..., model=path)``), echoed as hosted providers echo the requested model id.
    ``indexed`` (segment label -> content hash and recorded cache keys, for documents that came
    from a ``BeaconRAGRetriever``) adds ``content_hash`` and ``indexed_key`` to those segments:
    ``indexed_key`` (only where the index recorded keys, after ``precompute``) is True when the
    KV used is exactly the one the index recorded for that document.
    """
    segments = []
    for s in generation.segments:
        row: dict[str, Any] = {"key": s.key[:16], "kind": s.kind, "label": s.label, "source": s.source,
                               "raw_tokens": s.raw_tokens, "slots": s.slots}
        known = (indexed or {}).get(s.label or "") if s.kind == "document" else None
        if known is not None:
            row["content_hash"] = known["content_hash"]
            if known["cache_keys"]:  # only an index that recorded keys (precompute) can be checked
                row["indexed_key"] = s.key in known["cache_keys"]
        segments.append(row)
    return {
        "finish_reason": generation.finish_reason,
        "model_name": requested_model or generation.model_name,
        "beacon_rag": {
            "ttft_s": round(generation.ttft_s, 4),
            "total_s": round(generation.total_s, 4),
            "segments": segments,
        },
    }


def warn_if_empty(generation: Generation) -> None:
    """An empty answer is returned as is (it is what the model produced), but never silently."""
    if not generation.text:
        warnings.warn(
            f"{generation.model_name} produced no text (finish_reason={generation.finish_reason!r}, "
            f"{generation.usage.output_tokens} tokens); raise max_tokens or check the stop strings",
            RuntimeWarning,
            stacklevel=3,
        )


class BeaconRAGParams(BaseModel):
    """Settings common to :class:`ChatBeaconRAG` and :class:`BeaconRAG`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: str | None = Field(default_factory=lambda: os.environ.get("BEACON_RAG_MODEL") or None)
    """A local model folder or ``.gguf`` file; ``None`` is the embedded SmolLM2-135M-Instruct.
    Defaults to ``$BEACON_RAG_MODEL`` so a deployment can swap models without touching code."""
    compressor: str = "exact"
    """``exact`` (lossless KV reuse) or ``beacon`` (Activation Beacon compression)."""
    ratio: int | str | None = None
    """Compression ratio for ``beacon`` (an integer or ``"adapt"``); ``None`` is the method's default."""
    compressor_options: dict[str, Any] = Field(default_factory=dict)
    """Further keyword options for the compressor (for example ``window``)."""
    placement: Literal["chained", "independent"] = "chained"
    """``chained``: exact prefix semantics, right for histories; ``independent``: documents reused in any order."""
    cache_dir: str | None = None
    """Disk tier of the KV store; ``None`` is ``$BEACON_RAG_CACHE_DIR`` or the user cache folder."""
    persist: bool = True
    """Keep compressed KV on disk across processes (``False``: RAM only)."""
    temperature: float = 0.0
    """0 is greedy (deterministic: a cache hit then gives exactly the cold answer)."""
    max_tokens: int = 256
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    """Seconds a generation may run before ``TimeoutError`` (checked between tokens)."""
    max_retries: int = 0
    """Accepted for drop-in compatibility; local inference does not fail transiently, so never retried."""
    streaming: bool = False
    """Route ``invoke`` through ``_stream`` (callbacks then see every token)."""

    _registry: DocumentRegistry = PrivateAttr(default_factory=DocumentRegistry)

    @property
    def lc_attributes(self) -> dict[str, Any]:
        """Always serialize ``model``, ``None`` (the embedded model) included: otherwise the dump
        would omit it and a process that loads it would silently pick up its own $BEACON_RAG_MODEL."""
        return {"model": self.model}

    # ------------------------------------------------------------------ engine
    @property
    def engine(self) -> Engine:
        """The shared engine of this configuration; built (and the model loaded) on first use."""
        return self.engine_for(None)

    def engine_for(self, model: str | None) -> Engine:
        """The engine for a per-call ``model`` override (same settings otherwise)."""
        return Engine.shared(model or self.model, compressor=self.compressor, ratio=self.ratio,
                             compressor_options=dict(self.compressor_options or {}), placement=self.placement,
                             cache_dir=self.cache_dir, persist=self.persist)

    @property
    def model_name(self) -> str:
        """A name that needs no model load (``ls_model_name``); responses carry the loaded model's name."""
        if self.model is None:
            return "SmolLM2-135M-Instruct (embedded)"
        return Path(self.model).name

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids from the model's own tokenizer (the LangChain default would fetch GPT-2)."""
        return self.engine.lm.encode(text)

    # --------------------------------------------------------------- documents
    def register_documents(self, documents: Sequence[Document | str]) -> None:
        """Remember document texts so that a string prompt that contains them verbatim (as
        ``format_docs`` or ``create_stuff_documents_chain`` produce) still caches each one
        separately. Shared by copies made with ``bind``/``with_config``."""
        self._registry.add(documents)

    def document_registrar(self) -> RunnableLambda:
        """A pass-through runnable to put after a retriever: ``retriever | llm.document_registrar()``."""

        def register(docs: Any) -> Any:
            if isinstance(docs, list):
                self.register_documents([d for d in docs if isinstance(d, (Document, str))])
            return docs

        return RunnableLambda(register, name="register_documents")

    def document_callback(self) -> Any:
        """A callback handler that registers whatever any retriever in the run returns; pass it in
        ``config={"callbacks": [llm.document_callback()]}`` to leave the chain itself untouched."""
        from langchain_beacon_rag.callbacks import DocumentRegistrationHandler

        return DocumentRegistrationHandler(self)

    # -------------------------------------------------------------- generation
    def _sampling(self, stop: list[str] | None, kwargs: dict[str, Any]) -> SamplingParams:
        stops = stop if stop is not None else kwargs.get("stop", self.stop)
        return SamplingParams(
            max_new_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            top_k=int(kwargs.get("top_k", self.top_k)),
            seed=kwargs.get("seed", self.seed),
            stop=tuple(stops or ()),
        )

    def _run(self, messages: list[Message], params: SamplingParams, model: str | None = None
             ) -> tuple[Iterator[str], Any]:
        """Start a generation; returns the delta iterator and the stream (for ``.result``)."""
        stream = self.engine_for(model).stream(messages, params)
        deadline = time.monotonic() + self.timeout if self.timeout else None

        def deltas() -> Iterator[str]:
            for delta in stream:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"generation exceeded timeout={self.timeout}s")
                yield delta

        return deltas(), stream

    def _run_async(self, messages: list[Message], params: SamplingParams, model: str | None = None
                   ) -> AsyncIterator[str | Generation]:
        """Deltas, then the finished ``Generation``, without blocking the event loop."""
        return stream_in_thread(lambda: self._run(messages, params, model))
