"""Engine mechanics on tiny random Llama / Qwen2 / Mistral models.

Invariant 3 (exact + chained == plain transformers on the full prompt) and invariant 5 (a hit
never changes the answer) are checked on each family, with real caches on a real disk.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES

from beacon_rag import Block, Engine, Message, rag_messages
from beacon_rag.compressors import prefill_pre_rope
from beacon_rag.kv import KVContext, cache_from_layers

DOCS = [
    "The lighthouse on Gull Island was built in 1871 and painted red in 1902.",
    "Marta Okafor keeps the harbour logbook; the ferry leaves at seven every morning.",
    "In the old customs house, the archive holds maps of every shipwreck since 1750.",
]
QUESTION = "When was the lighthouse built?"


def plain_greedy(lm, ids: list[int], new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """Plain transformers on the whole prompt, no cache reuse: the reference."""
    with torch.inference_mode():
        out = lm.model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=new_tokens,
            output_logits=True, return_dict_in_generate=True, pad_token_id=lm.tokenizer.eos_token_id,
        )
    produced = out.sequences[0, len(ids):].tolist()
    produced = [t for t in produced if t not in lm.eos_token_ids]
    return produced, out.logits[0][0]


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_chained_equals_plain_prefill(tiny_models, family, tmp_path):
    lm = tiny_models[family]
    engine = Engine(lm, cache_dir=tmp_path)
    messages = rag_messages(QUESTION, DOCS)
    ids = engine.prompt_token_ids(messages)
    expected, _first_logits = plain_greedy(lm, ids, 12)
    result = engine.generate(messages, max_new_tokens=12)
    assert result.token_ids == expected
    assert result.usage.input_tokens == len(ids)
    assert result.usage.cache_read_tokens == 0
    assert result.usage.cache_creation_tokens == sum(u.raw_tokens for u in result.segments) > 0

    # The placed cache holds what a plain prefill of the same tokens computes (keys after RoPE).
    cached = sum(u.raw_tokens for u in result.segments)
    with torch.inference_mode():
        plain = cache_from_layers([], [])
        lm.model(torch.tensor([ids[:cached]]), **lm.cache_kwargs(plain), use_cache=True)
    placed = engine.prepare(messages).context.to_cache()
    for layer in range(lm.num_layers):
        torch.testing.assert_close(placed.layers[layer].keys, plain.layers[layer].keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(placed.layers[layer].values, plain.layers[layer].values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_hits_from_memory_and_disk_give_same_tokens(tiny_models, family, tmp_path):
    lm = tiny_models[family]
    messages = rag_messages(QUESTION, DOCS)
    cold = Engine(lm, cache_dir=tmp_path).generate(messages, max_new_tokens=10)
    assert {u.source for u in cold.segments} == {"computed"}

    engine = Engine(lm, cache_dir=tmp_path)  # fresh RAM tier, warm disk tier
    from_disk = engine.generate(messages, max_new_tokens=10)
    assert {u.source for u in from_disk.segments} == {"disk"}
    from_memory = engine.generate(messages, max_new_tokens=10)
    assert {u.source for u in from_memory.segments} == {"memory"}
    assert cold.token_ids == from_disk.token_ids == from_memory.token_ids
    assert from_memory.usage.cache_read_tokens == sum(u.raw_tokens for u in cold.segments)
    assert from_memory.usage.cache_creation_tokens == 0
    assert engine.compressions == 0


def test_growing_conversation_reuses_prefix(tiny_models, tmp_path):
    lm = tiny_models["llama"]
    engine = Engine(lm, cache_dir=tmp_path)
    history = [Message("system", "You are terse.")]
    created = []
    for turn in range(4):
        history.append(Message("user", f"Question number {turn}: what is {turn} plus {turn}?"))
        result = engine.generate(history, max_new_tokens=6)
        created.append(result.usage.cache_creation_tokens)
        # Everything but the newest completed turn was read from cache.
        if turn:
            assert result.usage.cache_read_tokens > 0
        ids = engine.prompt_token_ids(history)
        assert result.token_ids == plain_greedy(lm, ids, 6)[0]
        history.append(Message("assistant", result.text or "ok"))
    # The cost of a turn is its own tokens, not the history's.
    assert max(created[1:]) < 3 * min(created[1:])


def test_independent_documents_reused_in_any_order(tiny_models, tmp_path):
    lm = tiny_models["qwen2"]
    engine = Engine(lm, cache_dir=tmp_path, placement="independent")
    first = engine.generate(rag_messages(QUESTION, DOCS), max_new_tokens=4)
    docs = [u for u in first.segments if u.kind == "document"]
    assert len(docs) == 3 and all(u.source == "computed" for u in docs)
    shuffled = engine.generate(rag_messages(QUESTION, [DOCS[2], DOCS[0], DOCS[1]]), max_new_tokens=4)
    assert all(u.source == "memory" for u in shuffled.segments)
    assert engine.compressions == len(first.segments)
    new_doc = "A fourth document about the tides."
    more = engine.generate(rag_messages(QUESTION, [DOCS[1], new_doc, DOCS[0]]), max_new_tokens=4)
    assert [u.source for u in more.segments if u.kind == "document"] == ["memory", "computed", "memory"]


def test_independent_first_document_is_exact_and_repair_recomputes(tiny_models, tmp_path):
    """Under independent placement the first document sits where it was encoded (exact); the
    repair re-encodes the first tokens of later documents in the real context."""
    lm = tiny_models["mistral"]
    messages = rag_messages(QUESTION, DOCS)
    chained = Engine(lm, persist=False).prepare(messages).context.joined()
    plain_ind = Engine(lm, persist=False, placement="independent").prepare(messages)
    repaired = Engine(lm, persist=False, placement="independent", repair_tokens=8).prepare(messages)
    uses = plain_ind.uses
    first_doc_end = sum(u.raw_tokens for u in uses[: [u.kind for u in uses].index("document") + 1])
    torch.testing.assert_close(plain_ind.context.joined()[0][:, :, :first_doc_end], chained[0][:, :, :first_doc_end])
    gap_plain = (plain_ind.context.joined()[0] - chained[0]).abs().sum()
    gap_repaired = (repaired.context.joined()[0] - chained[0]).abs().sum()
    assert gap_plain > 0
    assert gap_repaired < gap_plain


def test_stop_strings_streaming_and_sampling(tiny_models, tmp_path):
    lm = tiny_models["llama"]
    engine = Engine(lm, cache_dir=tmp_path)
    messages = rag_messages(QUESTION, DOCS)
    full = engine.generate(messages, max_new_tokens=16)
    assert full.finish_reason in {"length", "stop"}
    stream = engine.stream(messages, max_new_tokens=16)
    pieces = list(stream)
    assert "".join(pieces) == full.text == stream.result.text
    assert stream.result.ttft_s <= stream.result.total_s
    if len(full.text) > 4:
        stop = full.text[2:4]
        stopped = engine.generate(messages, max_new_tokens=16, stop=[stop])
        assert stopped.text == full.text[: full.text.find(stop)]
        assert stopped.finish_reason == "stop"
    a = engine.generate(messages, max_new_tokens=8, temperature=1.0, seed=3)
    b = engine.generate(messages, max_new_tokens=8, temperature=1.0, seed=3)
    c = engine.generate(messages, max_new_tokens=8, temperature=1.0, seed=4, top_k=5, top_p=0.9)
    assert a.token_ids == b.token_ids
    assert len(c.token_ids) >= 1


def test_prefill_capture_matches_model_keys(tiny_models):
    """Pre-RoPE keys captured from k_proj, rotated at assembly, equal the model's own cache."""
    lm = tiny_models["qwen2"]
    ids = lm.encode("Some text to encode, long enough to span two chunks. " * 4)
    keys, values = prefill_pre_rope(lm, ids, KVContext(lm), chunk_tokens=7)
    from beacon_rag.kv import CompressedKV
    context = KVContext(lm)
    context.append(CompressedKV(keys, values, len(ids)))
    with torch.inference_mode():
        plain = cache_from_layers([], [])
        lm.model(torch.tensor([ids]), **lm.cache_kwargs(plain), use_cache=True)
    placed = context.to_cache()
    for layer in range(lm.num_layers):
        torch.testing.assert_close(placed.layers[layer].keys, plain.layers[layer].keys, rtol=1e-5, atol=1e-5)


def test_cache_control_blocks_become_segments(tiny_models, tmp_path):
    lm = tiny_models["llama"]
    engine = Engine(lm, cache_dir=tmp_path)
    messages = [
        Message("system", [Block("Long shared instructions. " * 5, cache=True)]),
        Message("user", "Hi"),
    ]
    result = engine.generate(messages, max_new_tokens=3)
    assert result.segments and result.segments[0].kind == "context"
    assert engine.generate(messages, max_new_tokens=3).usage.cache_read_tokens == result.usage.cache_creation_tokens


def test_shared_engine_is_one_per_configuration(tiny_models, tmp_path, monkeypatch):
    lm = tiny_models["llama"]
    a = Engine.shared(lm, cache_dir=tmp_path / "a")
    assert Engine.shared(lm, cache_dir=tmp_path / "a") is a
    assert Engine.shared(lm, cache_dir=str(tmp_path / "a")) is a  # same directory however spelled
    assert Engine.shared(lm, cache_dir=tmp_path / "b") is not a
    assert Engine.shared(lm, cache_dir=tmp_path / "a", placement="independent") is not a
    monkeypatch.setenv("BEACON_RAG_CACHE_DIR", str(tmp_path / "env"))
    from_env = Engine.shared(lm)
    assert from_env.cache_dir == tmp_path / "env" and Engine.shared(lm) is from_env
    # ``ratio`` is the adapters' flat field: folded into the compressor's options, refused for exact.
    streaming = Engine.shared(lm, compressor="streaming", ratio=4, cache_dir=tmp_path / "a")
    assert streaming.compressor.spec()["ratio"] == 4 and streaming is not a
    assert Engine.shared(lm, compressor="streaming", compressor_options={"ratio": 4}, cache_dir=tmp_path / "a") \
        is streaming
    with pytest.raises(ValueError, match="ratio applies to compressing methods"):
        Engine.shared(lm, ratio=4, cache_dir=tmp_path / "a")


def test_stream_in_thread_yields_deltas_then_the_generation(tiny_models, tmp_path):
    import asyncio

    from beacon_rag import Generation, stream_in_thread

    engine = Engine(tiny_models["qwen2"], cache_dir=tmp_path)
    messages = rag_messages("What is the code?", ["The code is 4411."])
    expected = engine.generate(messages, max_new_tokens=6)

    async def collect() -> list:
        def start():
            stream = engine.stream(messages, max_new_tokens=6)
            return stream, stream
        return [item async for item in stream_in_thread(start)]

    items = asyncio.run(collect())
    assert isinstance(items[-1], Generation) and items[-1].token_ids == expected.token_ids
    assert "".join(items[:-1]) == expected.text

    async def failing() -> None:
        async for _ in stream_in_thread(lambda: engine.stream(messages, max_new_tokens=0)):
            pass

    with pytest.raises(ValueError, match="max_new_tokens"):  # raised in the worker, re-raised here
        asyncio.run(failing())


@pytest.mark.parametrize("family", FAMILIES)
def test_forwards_take_the_cache_under_the_keyword_of_this_transformers(tiny_models, family):
    """transformers 5.2x renamed forward's ``past_key_values`` to ``cache`` and will drop the old
    name (pyproject makes its deprecation warning an error, so any forward of ours still passing
    the old name fails the suite). Both the causal LM and its decoder take the keyword we pass."""
    import inspect

    from beacon_rag.models.loader import _cache_keyword

    lm = tiny_models[family]
    (keyword,) = lm.cache_kwargs(None)
    for module in (lm.model, lm.model.model):
        assert keyword in inspect.signature(type(module).forward).parameters

    class BeforeTheRename:  # the forward signature of transformers 5.0 models
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            raise NotImplementedError

    class AfterTheRename:
        def forward(self, input_ids=None, cache=None, use_cache=None):
            raise NotImplementedError

    assert _cache_keyword(BeforeTheRename) == "past_key_values"
    assert _cache_keyword(AfterTheRename) == "cache"
