"""``BeaconRAG``: a LlamaIndex ``CustomLLM`` over a local model with reusable, compressed KV.

Each document block (a ``CitableBlock``, a text ``DocumentBlock``), each ``CachePoint``-ended
prefix and each complete conversation turn becomes a cached segment, so a repeated RAG question
or a growing chat only prefills what is new. Usage, including the cached tokens, is reported in
``raw["usage"]`` and in ``additional_kwargs`` (the keys LlamaIndex's token counter reads).

Why engines are shared per configuration: LlamaIndex copies and rebuilds LLM objects freely
(``Settings``, query engines, ``model_copy``), but an engine owns a RAM cache tier and a disk
store; two engines over one cache folder would each keep their own RAM copy of the same KV.
So the object stays a cheap settings holder and the engine is looked up.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from beacon_rag import Engine, Generation, GenerationStream, Message, SamplingParams, stream_in_thread
from llama_index.llms.beacon_rag.messages import to_beacon_messages

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct (embedded)"

def usage_of(generation: Generation) -> dict[str, Any]:
    """Usage under the names LlamaIndex users and its ``TokenCountingHandler`` look for.

    ``prompt_tokens`` / ``completion_tokens`` are read by the token counter;
    ``prompt_tokens_details.cached_tokens`` is where OpenAI reports prompt caching and
    ``cache_read_input_tokens`` / ``cache_creation_input_tokens`` where Anthropic does.
    """
    usage = generation.usage
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_creation_tokens,
    }


def raw_of(generation: Generation) -> dict[str, Any]:
    """``raw`` of a response: usage, model, finish reason, and where each cached segment came from."""
    return {
        "usage": usage_of(generation),
        "model": generation.model_name,
        "finish_reason": generation.finish_reason,
        "beacon_rag": {
            "ttft_s": round(generation.ttft_s, 4),
            "total_s": round(generation.total_s, 4),
            "segments": [
                {"key": s.key[:16], "kind": s.kind, "label": s.label, "source": s.source,
                 "raw_tokens": s.raw_tokens, "slots": s.slots}
                for s in generation.segments
            ],
        },
    }


def additional_kwargs_of(generation: Generation) -> dict[str, int]:
    """The flat token counts LlamaIndex LLM integrations put in ``additional_kwargs``."""
    usage = generation.usage
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": usage.cache_read_tokens,
        "cache_creation_tokens": usage.cache_creation_tokens,
    }


def _warn_if_empty(generation: Generation) -> None:
    """An empty answer is returned as is (it is what the model produced), but never silently."""
    if not generation.text:
        warnings.warn(
            f"{generation.model_name} produced no text (finish_reason={generation.finish_reason!r}, "
            f"{generation.usage.output_tokens} tokens); raise max_tokens or check the stop strings",
            RuntimeWarning,
            stacklevel=4,
        )


class BeaconRAG(CustomLLM):
    """LlamaIndex LLM backed by a ``beacon_rag.Engine``.

    Construction is cheap: the engine (and the model, once per process) is created on first use
    and shared by every instance with the same configuration.

    Example::

        from llama_index.llms.beacon_rag import BeaconRAG
        llm = BeaconRAG(max_tokens=64)                  # embedded SmolLM2, exact KV reuse
        response = llm.chat([ChatMessage(role="user", content="Hi!")])
        response.raw["usage"]                           # prompt/completion/cached tokens
    """

    model: str | None = Field(
        default_factory=lambda: os.environ.get("BEACON_RAG_MODEL") or None,
        description="A local model folder or .gguf file; None is the embedded SmolLM2-135M-Instruct "
                    "(default: $BEACON_RAG_MODEL).",
    )
    compressor: str = Field(default="exact", description="'exact' (lossless KV reuse) or 'beacon'.")
    ratio: int | str | None = Field(default=None, description="Compression ratio for 'beacon' (or 'adapt').")
    compressor_options: dict[str, Any] = Field(default_factory=dict,
                                               description="Further compressor options (e.g. window).")
    placement: Literal["chained", "independent"] = Field(
        default="chained",
        description="'chained': exact prefix semantics; 'independent': documents reused in any order.",
    )
    cache_dir: str | None = Field(default=None, description="Disk tier; None is $BEACON_RAG_CACHE_DIR "
                                                            "or the user cache folder.")
    persist: bool = Field(default=True, description="Keep compressed KV on disk across processes.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 is greedy (deterministic).")
    max_tokens: int = Field(default=256, gt=0, description="Most tokens generated per call.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = Field(default=None)
    stop: list[str] | None = Field(default=None, description="Stop strings (not included in the output).")

    @classmethod
    def class_name(cls) -> str:
        return "BeaconRAG"

    # ------------------------------------------------------------------ engine
    @property
    def engine(self) -> Engine:
        """The shared engine of this configuration; built (and the model loaded) on first use."""
        return Engine.shared(self.model, compressor=self.compressor, ratio=self.ratio,
                             compressor_options=dict(self.compressor_options or {}), placement=self.placement,
                             cache_dir=self.cache_dir, persist=self.persist)

    @property
    def model_name(self) -> str:
        """A name that needs no model load."""
        return EMBEDDED_MODEL_NAME if self.model is None else Path(self.model).name

    @property
    def metadata(self) -> LLMMetadata:
        """The real window (the model's trained positions): LlamaIndex's prompt helper packs
        context by it, so a guessed value would overflow or waste the window. Loads the model."""
        lm = self.engine.lm
        return LLMMetadata(
            context_window=lm.max_positions,
            num_output=self.max_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=lm.name,
            system_role=MessageRole.SYSTEM,
        )

    @property
    def tokenizer(self) -> Callable[[str], list[int]]:
        """The model's own tokenizer as a ``str -> ids`` callable, for ``Memory(tokenizer_fn=...)``
        and ``Settings.tokenizer``: token budgets then count what the model really sees."""
        return self.engine.lm.encode

    # -------------------------------------------------------------- sampling
    def sampling(self, kwargs: dict[str, Any]) -> SamplingParams:
        """Per-call overrides: ``max_tokens`` (or ``max_new_tokens``), ``temperature``, ``top_p``,
        ``top_k``, ``seed``, ``stop`` (a string or a list)."""
        unknown = set(kwargs) - {"max_tokens", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                                 "formatted"}
        if unknown:
            logger.debug("ignoring keyword arguments %s", sorted(unknown))
        stops = kwargs.get("stop", self.stop)
        if isinstance(stops, str):
            stops = [stops]
        return SamplingParams(
            max_new_tokens=int(kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens))),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            top_k=int(kwargs.get("top_k", self.top_k)),
            seed=kwargs.get("seed", self.seed),
            stop=tuple(stops or ()),
        )

    @staticmethod
    def _prompt_messages(prompt: str) -> list[Message]:
        # The engine works on chat messages (it needs the template's turn boundaries to cut
        # segments); a completion prompt is one user turn, as instruction-tuned models expect.
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        return [Message("user", prompt)]

    # ----------------------------------------------------------------- sync
    def generate(self, messages: Sequence[Message], **kwargs: Any) -> Generation:
        """The whole ``Generation`` (text, usage, segments) for engine messages: for callers that
        want more than LlamaIndex's response types carry."""
        return self.engine.stream(list(messages), self.sampling(kwargs)).collect()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._completion(self.generate(self._prompt_messages(prompt), **kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        messages, params = self._prompt_messages(prompt), self.sampling(kwargs)

        def gen() -> CompletionResponseGen:
            stream = self.engine.stream(messages, params)
            text = ""
            for delta in stream:
                text += delta
                yield CompletionResponse(text=text, delta=delta)
            yield self._completion(stream.result, delta="")

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(self.generate(to_beacon_messages(messages), **kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        converted, params = to_beacon_messages(messages), self.sampling(kwargs)

        def gen() -> ChatResponseGen:
            stream = self.engine.stream(converted, params)
            text = ""
            for delta in stream:
                text += delta
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)
            yield self._chat(stream.result, delta="")

        return gen()

    # ---------------------------------------------------------------- async
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result = await self._collect_async(self._prompt_messages(prompt), self.sampling(kwargs))
        return self._completion(result)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any
                               ) -> CompletionResponseAsyncGen:
        messages, params = self._prompt_messages(prompt), self.sampling(kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            async for item in self._run_async(messages, params):
                if isinstance(item, Generation):
                    yield self._completion(item, delta="")
                else:
                    text += item
                    yield CompletionResponse(text=text, delta=item)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        result = await self._collect_async(to_beacon_messages(messages), self.sampling(kwargs))
        return self._chat(result)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        converted, params = to_beacon_messages(messages), self.sampling(kwargs)

        async def gen() -> ChatResponseAsyncGen:
            text = ""
            async for item in self._run_async(converted, params):
                if isinstance(item, Generation):
                    yield self._chat(item, delta="")
                else:
                    text += item
                    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=item)

        return gen()

    # -------------------------------------------------------------- helpers
    def _completion(self, generation: Generation, delta: str | None = None) -> CompletionResponse:
        _warn_if_empty(generation)
        return CompletionResponse(text=generation.text, delta=delta, raw=raw_of(generation),
                                  additional_kwargs=additional_kwargs_of(generation))

    def _chat(self, generation: Generation, delta: str | None = None) -> ChatResponse:
        _warn_if_empty(generation)
        # Usage goes on the response, not on the message: memories store messages, and token
        # counts in a stored message's additional_kwargs would be counted as history tokens.
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=generation.text),
                            delta=delta, raw=raw_of(generation), additional_kwargs=additional_kwargs_of(generation))

    async def _collect_async(self, messages: list[Message], params: SamplingParams) -> Generation:
        result: Generation | None = None
        async for item in self._run_async(messages, params):
            if isinstance(item, Generation):
                result = item
        assert result is not None  # _run_async always ends with the Generation or raises
        return result

    def _run_async(self, messages: list[Message], params: SamplingParams) -> AsyncIterator[str | Generation]:
        """Deltas, then the finished ``Generation``, without blocking the event loop."""

        def start() -> tuple[GenerationStream, GenerationStream]:
            stream = self.engine.stream(messages, params)
            return stream, stream  # the stream is its own delta iterator

        return stream_in_thread(start)
