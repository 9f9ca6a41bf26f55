"""Agent memory: ``Memory`` + ``CachedHistoryBlock`` keeps the conversation an append-only
prefix, so each turn prefills only its new tokens, across the FIFO's flushes too.

The loop below is what ``SimpleChatEngine.chat`` does (put the user message, read the memory,
chat, put the answer), written out to read each response's usage; the last test drives a real
``SimpleChatEngine`` and reads usage from LlamaIndex's own instrumentation events.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent
from llama_index.core.memory import Memory

from llama_index.llms.beacon_rag import CachedHistoryBlock, cached_memory

SYSTEM = "You are a helpful assistant. Answer in one short sentence."
QUESTIONS = [
    "What is the capital of France?",
    "What is the capital of Italy?",
    "What is the capital of Spain?",
    "What is the capital of Germany?",
    "What is the capital of Portugal?",
    "What is the capital of Austria?",
]


def converse(llm: Any, memory: Any, questions: list[str]) -> list[dict[str, int]]:
    system = ChatMessage(role="system", content=SYSTEM)
    turns = []
    for question in questions:
        memory.put(ChatMessage(role="user", content=question))
        response = llm.chat([system, *memory.get()])
        memory.put(response.message)
        u = response.raw["usage"]
        turns.append({"input": u["prompt_tokens"], "read": u["cache_read_input_tokens"],
                      "created": u["cache_creation_input_tokens"],
                      "prefill": u["prompt_tokens"] - u["cache_read_input_tokens"]})
    return turns


def test_per_turn_prefill_stays_flat_across_flushes(make_llm: Any) -> None:
    llm = make_llm(max_tokens=12)
    block = CachedHistoryBlock()
    # A small budget so the FIFO flushes turns into the block during the conversation.
    memory = cached_memory(llm, token_limit=60, token_flush_size=20, block=block)
    turns = converse(llm, memory, QUESTIONS)

    assert block.messages(memory.session_id), "precondition: the FIFO must have flushed turns into the block"
    inputs = [t["input"] for t in turns]
    assert inputs == sorted(inputs) and inputs[-1] > 2 * inputs[0]  # the history really grows
    for previous, turn in itertools.pairwise(turns):
        # Everything cached by the previous request is read back; nothing is compressed twice.
        assert turn["read"] == previous["read"] + previous["created"], turns
    prefills = [t["prefill"] for t in turns[1:]]
    # Flat: one exchange (last question + answer + this question), never the whole history.
    assert max(prefills) < inputs[-1] / 2, turns
    assert max(prefills) - min(prefills) <= 20, turns


def test_memory_returns_the_same_transcript_before_and_after_a_flush(make_llm: Any) -> None:
    llm = make_llm(max_tokens=8)
    block = CachedHistoryBlock()
    memory = cached_memory(llm, token_limit=60, token_flush_size=20, block=block)
    history: list[ChatMessage] = []
    for question in QUESTIONS[:4]:
        message = ChatMessage(role="user", content=question)
        memory.put(message)
        history.append(message)
        answer = ChatMessage(role="assistant", content=f"Answer to: {question}")
        memory.put(answer)
        history.append(answer)
    flushed = block.messages(memory.session_id)
    assert flushed and len(flushed) < len(history), "precondition: some (not all) turns were flushed"
    assert len(memory.get()) == len(history)
    assert [(m.role, m.content) for m in memory.get()] == [(m.role, m.content) for m in history]


def test_stock_memory_without_the_block_loses_the_cached_prefix(make_llm: Any) -> None:
    """The contrast that motivates the block: flushed turns vanish from the front, the chained
    keys of every later turn change, and the history is prefilled again."""
    llm = make_llm(max_tokens=12)
    memory = Memory.from_defaults(token_limit=60, token_flush_size=20, tokenizer_fn=llm.tokenizer)
    turns = converse(llm, memory, QUESTIONS)
    broken = [b for a, b in itertools.pairwise(turns) if b["read"] < a["read"] + a["created"]]
    assert broken, turns


def test_block_never_trims_it_refuses_past_max_messages() -> None:
    import asyncio

    block = CachedHistoryBlock(max_messages=2)
    messages = [ChatMessage(role="user", content=str(i), additional_kwargs={"session_id": "s"}) for i in range(3)]
    with pytest.raises(OverflowError, match="start a new session"):
        asyncio.run(block.aput(messages))
    assert [m.content for m in block.messages("s")] == ["0", "1"]
    assert "session_id" not in block.messages("s")[0].additional_kwargs


class _ChatUsage(BaseEventHandler):
    """Collects ``raw["usage"]`` of every LLM chat call (LlamaIndex instrumentation)."""

    usages: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "ChatUsage"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, LLMChatEndEvent) and event.response is not None and event.response.raw:
            self.usages.append(event.response.raw["usage"])


def test_simple_chat_engine_with_cached_memory(make_llm: Any) -> None:
    llm = make_llm(max_tokens=12)
    handler = _ChatUsage()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    try:
        chat = SimpleChatEngine.from_defaults(llm=llm, memory=cached_memory(llm), system_prompt=SYSTEM)
        answers = [str(chat.chat(q)) for q in QUESTIONS[:3]]
    finally:
        dispatcher.event_handlers.remove(handler)
    assert all(a.strip() for a in answers)
    assert len(handler.usages) == 3
    reads = [u["cache_read_input_tokens"] for u in handler.usages]
    created = [u["cache_creation_input_tokens"] for u in handler.usages]
    assert reads[0] == 0 and reads[1] == created[0] and reads[2] == reads[1] + created[1]
