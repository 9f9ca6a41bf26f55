"""A response synthesizer that keeps node identity all the way to the KV cache.

LlamaIndex's built-in synthesizers (``compact``, ``refine``...) join the retrieved nodes into one
``context_str``, so the LLM sees one string and cannot cache node by node. This synthesizer
overrides ``synthesize`` (where the nodes still exist) and sends one ``CitableBlock`` per node
(title, ``source=node_id``, the node's text), after a ``CachePoint``-ended preamble, with the
question last. ``BeaconRAG`` turns each such block into one cached segment keyed by its tokens,
so the same node is never compressed twice, and only the question is prefilled on a repeat.

The layout is exactly ``beacon_rag.rag_messages`` (system prompt, ``"Documents:\\n\\n"``, one
``"[title]\\n<text>\\n\\n"`` per document, ``"Question: ..."``): caches precomputed by
``DocumentIndex.precompute`` or ``Engine.ask`` are hits here too.

Use it in an ordinary query engine::

    engine = index.as_query_engine(llm=llm, response_synthesizer=BeaconSynthesizer(llm=llm))
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any

from llama_index.core.base.llms.types import CacheControl, CachePoint, ChatMessage, CitableBlock, MessageRole, TextBlock
from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.llms import LLM
from llama_index.core.prompts.mixin import PromptDictType, PromptMixinType
from llama_index.core.response_synthesizers.base import BaseSynthesizer, QueryTextType
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle
from llama_index.core.types import RESPONSE_TEXT_TYPE

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "Answer the question using the documents."
DEFAULT_PREAMBLE = "Documents:\n\n"
DEFAULT_QUESTION_TEMPLATE = "Question: {query_str}"
DEFAULT_TITLE_KEYS = ("title", "file_name")


def node_block(node: BaseNode, *, metadata_mode: MetadataMode = MetadataMode.LLM,
               title_keys: Sequence[str] = DEFAULT_TITLE_KEYS) -> CitableBlock:
    """One node as one citable document block: ``title`` from its metadata, ``source`` its id."""
    title = next((str(node.metadata[k]) for k in title_keys if node.metadata.get(k)), "")
    return CitableBlock(title=title, source=node.node_id,
                        content=[TextBlock(text=node.get_content(metadata_mode=metadata_mode))])


def rag_chat_messages(
    query_str: str,
    blocks: Sequence[CitableBlock],
    *,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    preamble: str | None = DEFAULT_PREAMBLE,
    question_template: str = DEFAULT_QUESTION_TEMPLATE,
) -> list[ChatMessage]:
    """The RAG prompt as LlamaIndex messages: a stable system prompt, then one user turn holding
    the cache-marked preamble, one block per document, and the question last (the only part a
    repeated query prefills)."""
    content: list[Any] = []
    if preamble:
        content += [TextBlock(text=preamble), CachePoint(cache_control=CacheControl(type="ephemeral"))]
    content += list(blocks)
    content.append(TextBlock(text=question_template.format(query_str=query_str.strip())))
    messages = [ChatMessage(role=MessageRole.SYSTEM, content=system_prompt)] if system_prompt else []
    return [*messages, ChatMessage(role=MessageRole.USER, blocks=content)]


def _details(raw: Any) -> dict[str, Any]:
    """``BeaconRAG``'s ``raw`` flattened for ``response.metadata["beacon_rag"]``: usage, model,
    finish reason, timings and segments side by side. Another LLM's ``raw`` is kept as it is."""
    if not isinstance(raw, dict):
        return {"raw": raw} if raw is not None else {}
    extra = raw.get("beacon_rag")
    flat = {k: v for k, v in raw.items() if k != "beacon_rag"}
    return {**flat, **extra} if isinstance(extra, dict) else flat


class BeaconSynthesizer(BaseSynthesizer):
    """Answer from retrieved nodes with one cached segment per node.

    Works with any LLM that reads ``CitableBlock``/``CachePoint`` (``BeaconRAG`` caches each node;
    others see an ordinary RAG prompt). With ``BeaconRAG(placement="independent")`` each node is
    cached after the shared prefix only, so any subset and order of known nodes is a cache hit and
    a new retrieval compresses only its new nodes; with ``"chained"`` (exact) nodes are reused
    while they come in the same order after the same prefix.

    The response's ``metadata["beacon_rag"]`` holds ``usage`` (with cached tokens), ``model``,
    ``finish_reason``, ``ttft_s`` and ``segments`` (per segment its ``kind``, ``label`` = node id,
    ``source`` = ``memory`` / ``disk`` / ``computed``, ``raw_tokens``); when streaming it is filled
    once the stream is consumed.
    """

    def __init__(
        self,
        llm: LLM | None = None,
        *,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        preamble: str | None = DEFAULT_PREAMBLE,
        question_template: str = DEFAULT_QUESTION_TEMPLATE,
        metadata_mode: MetadataMode = MetadataMode.LLM,
        title_keys: Sequence[str] = DEFAULT_TITLE_KEYS,
        streaming: bool = False,
        **kwargs: Any,
    ) -> None:
        if "{query_str}" not in question_template:
            raise ValueError("question_template must contain '{query_str}'")
        super().__init__(llm=llm, streaming=streaming, **kwargs)
        self._system_prompt = system_prompt
        self._preamble = preamble
        self._question_template = question_template
        self._metadata_mode = metadata_mode
        self._title_keys = tuple(title_keys)

    # PromptMixin: this synthesizer has no PromptTemplate (its layout is fixed by the cache contract).
    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts_dict: PromptDictType) -> None:
        if prompts_dict:
            raise ValueError("BeaconSynthesizer has no prompt templates; pass system_prompt / preamble / "
                             "question_template to its constructor")

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}

    # ------------------------------------------------------------ messages
    def messages_for_nodes(self, query_str: str, nodes: Sequence[NodeWithScore | BaseNode]) -> list[ChatMessage]:
        """The chat request for ``nodes`` (empty nodes skipped: they would cache nothing)."""
        blocks = []
        for item in nodes:
            node = item.node if isinstance(item, NodeWithScore) else item
            block = node_block(node, metadata_mode=self._metadata_mode, title_keys=self._title_keys)
            if not block.content[0].text.strip():
                logger.warning("node %s has no text; left out of the prompt", node.node_id)
                continue
            blocks.append(block)
        return rag_chat_messages(query_str, blocks, system_prompt=self._system_prompt, preamble=self._preamble,
                                 question_template=self._question_template)

    def _texts_as_nodes(self, text_chunks: Sequence[str]) -> list[CitableBlock]:
        return [CitableBlock(title="", source=f"chunk{i}", content=[TextBlock(text=t)])
                for i, t in enumerate(text_chunks) if t.strip()]

    # ------------------------------------------------- BaseSynthesizer API
    def get_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any) -> RESPONSE_TEXT_TYPE:
        """Text chunks without node identity (one cached segment per chunk all the same)."""
        messages = rag_chat_messages(query_str, self._texts_as_nodes(text_chunks), system_prompt=self._system_prompt,
                                     preamble=self._preamble, question_template=self._question_template)
        text, _ = self._answer(messages, response_kwargs)
        return text

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
                            ) -> RESPONSE_TEXT_TYPE:
        messages = rag_chat_messages(query_str, self._texts_as_nodes(text_chunks), system_prompt=self._system_prompt,
                                     preamble=self._preamble, question_template=self._question_template)
        text, _ = await self._aanswer(messages, response_kwargs)
        return text

    def synthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        if not nodes:
            return super().synthesize(query, nodes, additional_source_nodes, **response_kwargs)
        query = QueryBundle(query_str=query) if isinstance(query, str) else query
        with self._callback_manager.event(CBEventType.SYNTHESIZE,
                                          payload={EventPayload.QUERY_STR: query.query_str}) as event:
            answer, details = self._answer(self.messages_for_nodes(query.query_str, nodes), response_kwargs)
            response = self._prepare_response_output(answer, [*nodes, *(additional_source_nodes or [])])
            response.metadata = {**(response.metadata or {}), "beacon_rag": details}
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    async def asynthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        if not nodes:
            return await super().asynthesize(query, nodes, additional_source_nodes, **response_kwargs)
        query = QueryBundle(query_str=query) if isinstance(query, str) else query
        with self._callback_manager.event(CBEventType.SYNTHESIZE,
                                          payload={EventPayload.QUERY_STR: query.query_str}) as event:
            answer, details = await self._aanswer(self.messages_for_nodes(query.query_str, nodes), response_kwargs)
            response = self._prepare_response_output(answer, [*nodes, *(additional_source_nodes or [])])
            response.metadata = {**(response.metadata or {}), "beacon_rag": details}
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    # ------------------------------------------------------------ helpers
    def _answer(self, messages: list[ChatMessage], kwargs: dict[str, Any]
                ) -> tuple[str | Generator[str, None, None], dict[str, Any]]:
        """The answer (text, or a delta generator when streaming) and a dict that holds the LLM's
        ``raw`` (filled at once, or when the stream ends)."""
        details: dict[str, Any] = {}
        if not self._streaming:
            response = self._llm.chat(messages, **kwargs)
            details.update(_details(response.raw))
            return response.message.content or "", details

        def deltas() -> Generator[str, None, None]:
            for chunk in self._llm.stream_chat(messages, **kwargs):
                if chunk.delta:
                    yield chunk.delta
                if chunk.raw:
                    details.update(_details(chunk.raw))

        return deltas(), details

    async def _aanswer(self, messages: list[ChatMessage], kwargs: dict[str, Any]
                       ) -> tuple[str | AsyncGenerator[str, None], dict[str, Any]]:
        details: dict[str, Any] = {}
        if not self._streaming:
            response = await self._llm.achat(messages, **kwargs)
            details.update(_details(response.raw))
            return response.message.content or "", details

        async def deltas() -> AsyncGenerator[str, None]:
            async for chunk in await self._llm.astream_chat(messages, **kwargs):
                if chunk.delta:
                    yield chunk.delta
                if chunk.raw:
                    details.update(_details(chunk.raw))

        return deltas(), details
