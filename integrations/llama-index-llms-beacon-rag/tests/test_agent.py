"""A LlamaIndex ``ReActAgent`` on ``BeaconRAG`` with a tool and a ``cached_memory``: every agent call
re-sends the ReAct system prompt and the whole transcript, and the cache must absorb both.

Run on the embedded SmolLM2-135M-Instruct, through the agent's own workflow (no LLM stand-in): the
usage read from the agent's ``AgentOutput`` events is what the engine measured. What the model
chooses to do (call the tool or answer) is recorded but not asserted: a 135M model's choice is not
what this package promises; the cache reuse is.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

from beacon_rag.documents import read_documents, sample_documents_dir
from llama_index.core.agent.react import ReActChatFormatter
from llama_index.core.agent.workflow import AgentOutput, ReActAgent
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool

from llama_index.llms.beacon_rag import CachedHistoryBlock, cached_memory

# A compact ReAct header: the stock one (~560 tokens of rules) is not followed by a 135M model.
HEADER = """You answer questions about a small harbour town. Look its facts up with a tool.

Tools:
{tool_desc}
To use a tool, reply in exactly this format:
Thought: I need to look this up.
Action: lookup
Action Input: {{"query": "How long is the bridge?"}}

You then get an Observation with the result. When you know the answer, reply:
Thought: I can answer now.
Answer: The bridge is 40 metres long.
"""
EXAMPLE = [
    ChatMessage(role="user", content="Where is the town hall?"),
    ChatMessage(role="assistant",
                content='Thought: I need to look this up.\nAction: lookup\nAction Input: {"query": "Where is the town hall?"}'),
    ChatMessage(role="user", content="Observation: The town hall stands on the market square."),
    ChatMessage(role="assistant", content="Thought: I can answer now.\nAnswer: The town hall stands on the market square."),
]
QUESTIONS = ["How tall is the lighthouse?", "When does the ferry sail?", "Who is the harbour master?"]
# What the previous call sent but did not cache: its last message (the question or observation) and
# the generation prompt. Everything before it must come back from the cache.
TAIL_MARGIN = 48


def _sentences() -> list[str]:
    text = " ".join(d.text for d in read_documents([sample_documents_dir()]))
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip() and not s.startswith("#")]


SENTENCES = _sentences()
TOOL_QUERIES: list[str] = []


def lookup(query: str) -> str:
    """The sentence of the town's documents sharing the most words with the query."""
    TOOL_QUERIES.append(query)
    words = set(re.findall(r"\w+", query.lower()))
    return max(SENTENCES, key=lambda s: len(words & set(re.findall(r"\w+", s.lower()))))


async def run_turns(agent: ReActAgent, memory: Any, questions: list[str]) -> list[list[dict[str, Any]]]:
    """Per turn, the usage and first segment of every LLM call the agent made, from its events."""
    turns = []
    for question in questions:
        handler = agent.run(question, memory=memory, max_iterations=6)
        calls = []
        async for event in handler.stream_events():
            if isinstance(event, AgentOutput) and isinstance(event.raw, dict) and "usage" in event.raw:
                usage = event.raw["usage"]
                calls.append({"input": usage["prompt_tokens"], "read": usage["cache_read_input_tokens"],
                              "system": event.raw["beacon_rag"]["segments"][0],
                              "tool": [t.tool_name for t in event.tool_calls]})
        result = await handler
        print(f"{question!r} -> {result.response.content!r}")
        assert isinstance(result, AgentOutput) and (result.response.content or "").strip(), result
        turns.append(calls)
    return turns


def test_react_agent_turns_read_system_prompt_and_history_from_cache(make_llm: Any) -> None:
    llm = make_llm(max_tokens=40, stop=["Observation:"])
    tool = FunctionTool.from_defaults(lookup, name="lookup")
    block = CachedHistoryBlock()
    # A small budget: the FIFO flushes into the block mid-conversation, which must not cost a miss.
    memory = cached_memory(llm, token_limit=250, token_flush_size=60, block=block)
    memory.put_messages([m.model_copy(deep=True) for m in EXAMPLE])
    agent = ReActAgent(tools=[tool], llm=llm, formatter=ReActChatFormatter.from_defaults(system_header=HEADER))
    TOOL_QUERIES.clear()

    turns = asyncio.run(run_turns(agent, memory, QUESTIONS))

    assert [len(calls) >= 1 for calls in turns] == [True] * len(QUESTIONS), turns
    first = [calls[0] for calls in turns]
    system_tokens = first[0]["system"]["raw_tokens"]
    assert first[0]["system"]["source"] == "computed" and system_tokens > 100, first[0]
    for calls in turns:
        for previous, call in itertools.pairwise(calls):
            # A later step of the same turn (after a tool's observation or a retry) appends to the
            # previous step's prompt: all of it but its tail comes from the cache.
            assert call["read"] >= previous["input"] - TAIL_MARGIN, (previous, call)
    for previous, call in itertools.pairwise(first):
        # Each turn re-sends the ReAct system prompt: a hit...
        assert call["system"]["source"] == "memory" and call["system"]["raw_tokens"] == system_tokens, call
        # ...and the transcript before the previous turn's question. (Not the previous turn's steps:
        # ReActAgent commits a turn's steps to memory as one reworded assistant message, so that
        # message is new text, prefilled once.)
        assert call["read"] >= previous["input"] - TAIL_MARGIN, (previous, call)
        assert call["input"] > previous["input"], (previous, call)
    prefills = [c["input"] - c["read"] for c in first[1:]]
    assert max(prefills) < first[-1]["input"] / 2, first  # the history grows, the prefill does not
    assert block.messages(memory.session_id), "precondition: the FIFO must have flushed into the block"
    # The agent wrote each turn to our Memory: the transcript it reads back has the questions, in order.
    stored = [m.content for m in memory.get() if m.role == "user"]
    assert [q for q in stored if q in QUESTIONS] == QUESTIONS, stored
    print(f"tool queries: {TOOL_QUERIES}; per-turn calls: {[len(t) for t in turns]}")
    print("per call (input, read):", [[(c["input"], c["read"]) for c in t] for t in turns])
