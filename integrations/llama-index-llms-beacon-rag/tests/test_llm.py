"""BeaconRAG as a LlamaIndex LLM, on the embedded model (offline): every path returns the same
greedy text, reports real usage, and reuses the KV of what it has seen."""

from __future__ import annotations

from typing import Any

import pytest
from beacon_rag import Engine
from llama_index.core.base.llms.types import CacheControl, CachePoint, ChatMessage, CitableBlock, TextBlock
from llama_index.core.llms import CustomLLM

from llama_index.llms.beacon_rag import BeaconRAG

PROMPT = "Name three colours of the rainbow."
INSTRUCTIONS = ("You are the harbour office assistant. The harbour ferry leaves the north pier every hour "
                "from six in the morning until ten at night. The fish market opens at five in the morning.")


def usage(response: Any) -> dict[str, int]:
    return response.raw["usage"]


def test_is_a_custom_llm_and_construction_builds_no_engine() -> None:
    before = Engine.shared_engines()
    models = [BeaconRAG(max_tokens=8, cache_dir=f"/nonexistent/never-built-{i}") for i in range(10)]
    assert isinstance(models[0], CustomLLM) and BeaconRAG.class_name() == "BeaconRAG"
    assert Engine.shared_engines() == before  # nothing loaded, nothing created on disk


def test_metadata_reports_the_model_window(make_llm: Any) -> None:
    llm = make_llm(max_tokens=33)
    meta = llm.metadata
    assert meta.context_window == llm.engine.lm.max_positions == llm.engine.lm.config.max_position_embeddings
    assert meta.num_output == 33 and meta.is_chat_model and meta.model_name == llm.engine.lm.name
    assert llm.tokenizer("hello world") == llm.engine.lm.encode("hello world")


def test_same_configuration_shares_one_engine(make_llm: Any, tmp_path: Any) -> None:
    # make_llm's teardown drops the engines this test creates, these two included.
    a = BeaconRAG(cache_dir=str(tmp_path / "shared"))
    b = BeaconRAG(cache_dir=str(tmp_path / "shared"), temperature=0.5)  # sampling is per call, not per engine
    assert a.engine is b.engine
    assert BeaconRAG(cache_dir=str(tmp_path / "other")).engine is not a.engine


def test_complete_stream_and_chat_agree_and_report_usage(make_llm: Any) -> None:
    llm = make_llm(max_tokens=12)
    done = llm.complete(PROMPT)
    assert done.text.strip()
    u = usage(done)
    assert u["completion_tokens"] <= 12 and u["prompt_tokens"] > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert done.additional_kwargs["prompt_tokens"] == u["prompt_tokens"]
    assert done.additional_kwargs["cached_tokens"] == u["prompt_tokens_details"]["cached_tokens"]

    chunks = list(llm.stream_complete(PROMPT))
    assert "".join(c.delta or "" for c in chunks) == done.text == chunks[-1].text
    assert chunks[-1].raw["usage"]["completion_tokens"] == u["completion_tokens"]
    assert all(c.raw is None for c in chunks[:-1])  # usage once, on the closing chunk

    chat = llm.chat([ChatMessage(role="user", content=PROMPT)])
    assert chat.message.content == done.text and chat.message.role == "assistant"
    streamed = list(llm.stream_chat([ChatMessage(role="user", content=PROMPT)]))
    assert "".join(c.delta or "" for c in streamed) == done.text == streamed[-1].message.content
    assert streamed[-1].raw["usage"]["prompt_tokens"] == u["prompt_tokens"]


async def test_async_variants_match_the_sync_answer(make_llm: Any) -> None:
    llm = make_llm(max_tokens=12)
    expected = llm.complete(PROMPT).text
    assert (await llm.acomplete(PROMPT)).text == expected
    assert (await llm.achat([ChatMessage(role="user", content=PROMPT)])).message.content == expected
    deltas = [c.delta async for c in await llm.astream_complete(PROMPT)]
    assert "".join(d or "" for d in deltas) == expected
    chunks = [c async for c in await llm.astream_chat([ChatMessage(role="user", content=PROMPT)])]
    assert "".join(c.delta or "" for c in chunks) == expected
    assert chunks[-1].raw["usage"]["completion_tokens"] > 0


def test_max_tokens_stop_and_sampling_options(make_llm: Any) -> None:
    llm = make_llm(max_tokens=16)
    capped = llm.complete(PROMPT, max_tokens=3)
    assert usage(capped)["completion_tokens"] == 3 and capped.raw["finish_reason"] == "length"
    full = llm.complete(PROMPT).text
    word = next(w for w in full.split() if len(w) > 3)
    stopped = llm.complete(PROMPT, stop=[word])
    assert word not in stopped.text and full.startswith(stopped.text)
    first = llm.complete(PROMPT, temperature=1.0, seed=7, max_tokens=6).text
    assert llm.complete(PROMPT, temperature=1.0, seed=7, max_tokens=6).text == first  # a seed makes sampling repeatable
    with pytest.raises(ValueError, match="temperature"):
        llm.complete(PROMPT, temperature=-1)


def test_cache_point_content_is_read_from_cache_on_the_next_call(make_llm: Any) -> None:
    llm = make_llm(max_tokens=8)

    def ask(question: str) -> Any:
        return llm.chat([ChatMessage(role="user", blocks=[
            TextBlock(text=INSTRUCTIONS), CachePoint(cache_control=CacheControl(type="ephemeral")),
            TextBlock(text=question)])])

    cold = ask("When does the ferry leave?")
    warm = ask("When does the market open?")  # different question after the same cached prefix
    assert usage(cold)["cache_creation_input_tokens"] > 0 and usage(cold)["cache_read_input_tokens"] == 0
    segments = warm.raw["beacon_rag"]["segments"]
    assert segments and all(s["source"] == "memory" for s in segments)
    assert usage(warm)["cache_read_input_tokens"] == usage(cold)["cache_creation_input_tokens"]
    assert usage(warm)["cache_creation_input_tokens"] == 0
    assert warm.additional_kwargs["cached_tokens"] == usage(warm)["cache_read_input_tokens"]


def test_citable_blocks_are_cached_one_segment_each(make_llm: Any) -> None:
    llm = make_llm(max_tokens=6, placement="independent")
    docs = {"ferry": "The harbour ferry leaves the north pier every hour from six in the morning.",
            "market": "The fish market opens at five in the morning; the bell rings twice.",
            "museum": "The maritime museum keeps the old ferry bell and is closed on Mondays."}

    def ask(names: list[str]) -> Any:
        blocks = [CitableBlock(title=n, source=n, content=[TextBlock(text=docs[n])]) for n in names]
        return llm.chat([ChatMessage(role="user", blocks=[*blocks, TextBlock(text="Question: when?")])])

    first = ask(["ferry", "market"])
    second = ask(["market", "museum"])  # one known document (in another position), one new
    by_label = {s["label"]: s for s in second.raw["beacon_rag"]["segments"] if s["kind"] == "document"}
    assert by_label["market"]["source"] == "memory" and by_label["museum"]["source"] == "computed"
    assert usage(second)["cache_creation_input_tokens"] == by_label["museum"]["raw_tokens"]
    assert {s["label"] for s in first.raw["beacon_rag"]["segments"] if s["kind"] == "document"} == {"ferry", "market"}


def test_bad_input_is_refused_with_a_clear_error(make_llm: Any) -> None:
    llm = make_llm()
    with pytest.raises(TypeError, match="prompt must be a str"):
        llm.complete(["not", "a", "string"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no messages"):
        llm.chat([])
    with pytest.raises(ValueError, match="'image'"):
        from llama_index.core.base.llms.types import ImageBlock

        llm.chat([ChatMessage(role="user", blocks=[ImageBlock(url="http://example.invalid/a.png")])])


def test_token_counting_handler_reads_the_engine_usage(make_llm: Any) -> None:
    from llama_index.core.callbacks import CallbackManager, TokenCountingHandler

    llm = make_llm(max_tokens=6)
    counter = TokenCountingHandler(tokenizer=llm.tokenizer)
    llm.callback_manager = CallbackManager([counter])
    response = llm.chat([ChatMessage(role="user", content=PROMPT)])
    assert counter.prompt_llm_token_count == usage(response)["prompt_tokens"]
    assert counter.completion_llm_token_count == usage(response)["completion_tokens"]
