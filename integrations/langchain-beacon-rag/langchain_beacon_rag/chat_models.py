"""``ChatBeaconRAG``: a LangChain chat model over a local model with reusable, compressed KV.

Each retrieved document (a ``text-plain`` block, or a registered text found in a string
prompt), each ``cache_control``-marked prefix and each complete conversation turn becomes a
cached segment, so a repeated RAG question or a growing chat only prefills what is new.
``usage_metadata["input_token_details"]`` reports that reuse as ``cache_read`` /
``cache_creation``, the place LangChain users already look for provider prompt caching.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from beacon_rag import Generation, Message, SamplingParams
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from langchain_beacon_rag._base import BeaconRAGParams, generation_metadata, usage_metadata, warn_if_empty
from langchain_beacon_rag.messages import indexed_documents, to_beacon_messages


class ChatBeaconRAG(BeaconRAGParams, BaseChatModel):
    """Chat model backed by a ``beacon_rag.Engine``.

    Construction is cheap: the engine (and the model, once per process) is created on the first
    call and shared by every instance with the same configuration.

    Example::

        from langchain_beacon_rag import ChatBeaconRAG, documents_to_message
        llm = ChatBeaconRAG(max_tokens=64)              # embedded SmolLM2, exact KV reuse
        answer = llm.invoke([documents_to_message(docs, "Who runs the ferry?")])
        answer.usage_metadata["input_token_details"]    # {"cache_read": ..., "cache_creation": ...}
    """

    @property
    def _llm_type(self) -> str:
        return "beacon-rag"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model_name, "compressor": self.compressor, "ratio": self.ratio,
                "placement": self.placement, "temperature": self.temperature, "max_tokens": self.max_tokens}

    @classmethod
    def is_lc_serializable(cls) -> bool:
        # Every field is plain settings (paths, numbers, strings); the engine and the KV live
        # outside the object, so ``dumpd``/``load`` round-trips a model exactly.
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_beacon_rag", "chat_models"]

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="beacon-rag",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        if max_tokens := kwargs.get("max_tokens", self.max_tokens):
            params["ls_max_tokens"] = max_tokens
        if stops := stop or kwargs.get("stop") or self.stop:
            params["ls_stop"] = list(stops)
        return params

    # ------------------------------------------------------------------ sync
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request, params, model, indexed = self._request(messages, stop, kwargs)
        deltas, stream = self._run(request, params, model)
        for _ in deltas:
            pass
        return self._result(stream.result, model, indexed)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # The base class fires on_llm_new_token for every chunk we yield (core 1.x); firing it here
        # too would report each token twice.
        request, params, model, indexed = self._request(messages, stop, kwargs)
        deltas, stream = self._run(request, params, model)
        for delta in deltas:
            yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
        yield self._last_chunk(stream.result, model, indexed)

    # ----------------------------------------------------------------- async
    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result: Generation | None = None
        request, params, model, indexed = self._request(messages, stop, kwargs)
        async for item in self._run_async(request, params, model):
            if isinstance(item, Generation):
                result = item
        assert result is not None
        return self._result(result, model, indexed)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request, params, model, indexed = self._request(messages, stop, kwargs)
        async for item in self._run_async(request, params, model):
            if isinstance(item, Generation):
                yield self._last_chunk(item, model, indexed)
            else:
                yield ChatGenerationChunk(message=AIMessageChunk(content=item))

    # --------------------------------------------------------------- helpers
    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
                 ) -> tuple[list[Message], SamplingParams, str | None, dict[str, dict[str, Any]]]:
        """Engine messages (documents and cache markers kept as blocks), sampling, model override,
        and the index's content hash / cache keys of each retrieved document (for the response)."""
        return (to_beacon_messages(messages, self._registry), self._sampling(stop, kwargs), kwargs.get("model"),
                indexed_documents(messages))

    def _result(self, generation: Generation, requested_model: str | None = None,
                indexed: dict[str, dict[str, Any]] | None = None) -> ChatResult:
        warn_if_empty(generation)
        meta = generation_metadata(generation, requested_model, indexed)
        message = AIMessage(content=generation.text, usage_metadata=usage_metadata(generation),  # type: ignore[arg-type]
                            response_metadata=meta)
        return ChatResult(generations=[ChatGeneration(message=message, generation_info={
            "finish_reason": generation.finish_reason})])

    def _last_chunk(self, generation: Generation, requested_model: str | None = None,
                    indexed: dict[str, dict[str, Any]] | None = None) -> ChatGenerationChunk:
        """The closing chunk: usage (so input_tokens is counted once), model name, finish reason."""
        warn_if_empty(generation)
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage_metadata(generation),  # type: ignore[arg-type]
                response_metadata=generation_metadata(generation, requested_model, indexed),
                chunk_position="last",
            ),
            generation_info={"finish_reason": generation.finish_reason},
        )
