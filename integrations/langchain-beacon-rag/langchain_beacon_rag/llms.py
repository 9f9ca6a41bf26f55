"""``BeaconRAG``: the text-completion twin of :class:`ChatBeaconRAG`.

A string prompt is sent as one user turn through the model's chat template (the engine
always speaks chat; the embedded model is an instruct model). Registered documents found in
the prompt are still cached one by one, which is what makes ``PromptTemplate | BeaconRAG``
RAG chains cheap on a repeated question.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from beacon_rag import Generation as BeaconGeneration
from beacon_rag import Message
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from langchain_beacon_rag._base import BeaconRAGParams, generation_metadata, usage_metadata, warn_if_empty
from langchain_beacon_rag.messages import content_blocks


class BeaconRAG(BeaconRAGParams, LLM):
    """Completion-style LLM over a shared ``beacon_rag.Engine`` (see ``ChatBeaconRAG``)."""

    @property
    def _llm_type(self) -> str:
        return "beacon-rag"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model_name, "compressor": self.compressor, "placement": self.placement}

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True  # settings only; see ChatBeaconRAG.is_lc_serializable

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_beacon_rag", "llms"]

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "beacon-rag"
        params["ls_model_name"] = kwargs.get("model") or self.model_name
        return params

    def _messages(self, prompt: str) -> list[Message]:
        blocks = content_blocks(prompt, self._registry)
        if all(not b.document and not b.cache for b in blocks):
            return [Message("user", prompt)]
        return [Message("user", blocks)]

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        """One generation per prompt, each with its usage (``_call`` alone would drop it)."""
        generations = []
        for prompt in prompts:
            if self.streaming:
                chunks = list(self._stream(prompt, stop, run_manager, **kwargs))
                text = "".join(c.text for c in chunks)
                info = chunks[-1].generation_info or {}
            else:
                deltas, stream = self._run(self._messages(prompt), self._sampling(stop, kwargs))
                for _ in deltas:
                    pass
                text, info = stream.result.text, self._info(stream.result)
            generations.append([Generation(text=text, generation_info=info)])
        return LLMResult(generations=generations)

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return self._generate([prompt], stop, run_manager, **kwargs).generations[0][0].text

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        # The LLM base class does not fire token callbacks itself (unlike BaseChatModel).
        deltas, stream = self._run(self._messages(prompt), self._sampling(stop, kwargs))
        for delta in deltas:
            chunk = GenerationChunk(text=delta)
            if run_manager:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        yield GenerationChunk(text="", generation_info=self._info(stream.result))

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        async for item in self._run_async(self._messages(prompt), self._sampling(stop, kwargs)):
            if isinstance(item, BeaconGeneration):
                yield GenerationChunk(text="", generation_info=self._info(item))
                continue
            chunk = GenerationChunk(text=item)
            if run_manager:
                await run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            text, info = "", {}
            async for chunk in self._astream(prompt, stop, run_manager if self.streaming else None, **kwargs):
                text += chunk.text
                info = chunk.generation_info or info
            generations.append([Generation(text=text, generation_info=info)])
        return LLMResult(generations=generations)

    @staticmethod
    def _info(generation: BeaconGeneration) -> dict[str, Any]:
        warn_if_empty(generation)
        return {**generation_metadata(generation), "usage_metadata": usage_metadata(generation)}
