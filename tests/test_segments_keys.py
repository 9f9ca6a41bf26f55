"""Segments reproduce the chat template exactly; keys change whenever any component changes."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon_rag import Block, Engine, Message, rag_messages
from beacon_rag.segments import KeyContext, build_segments, chain, segment_key

CONVERSATION = [
    Message("system", "You are a careful assistant."),
    Message("user", "What is a lighthouse?"),
    Message("assistant", "A tower with a light that guides ships."),
    Message("user", "Who keeps it?"),
]


def test_segments_concatenate_to_the_template_rendering(embedded):
    segments, tail = build_segments(embedded, CONVERSATION)
    rendered = embedded.tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in CONVERSATION], tokenize=False, add_generation_prompt=True
    )
    assert "".join(s.text for s in segments) + tail.text == rendered
    # One segment per complete message, the last user turn live.
    assert [s.kind for s in segments] == ["context"] * 3
    assert tail.text.startswith("Who keeps it?")


def test_document_blocks_are_their_own_segments(embedded):
    messages = rag_messages("Q?", ["first doc", "second doc"])
    segments, tail = build_segments(embedded, messages)
    kinds = [s.kind for s in segments]
    assert kinds.count("document") == 2
    assert [s.text for s in segments if s.kind == "document"] == ["first doc\n\n", "second doc\n\n"]
    assert tail.text.startswith("Question: Q?")


def test_no_system_message_still_splits_documents(embedded):
    messages = [Message("user", [Block("doc text", document=True), Block("question")])]
    segments, _tail = build_segments(embedded, messages)
    assert [s.kind for s in segments] == ["context", "document"]
    assert segments[1].text == "doc text"


BASE = KeyContext("m" * 64, "t" * 64, {"name": "exact"}, "float32", "")
FIELDS = {
    "model_fingerprint": st.text(min_size=1, max_size=8),
    "tokenizer_digest": st.text(min_size=1, max_size=8),
    "compressor": st.fixed_dictionaries({"name": st.sampled_from(["exact", "beacon"]),
                                         "ratio": st.integers(0, 32)}),
    "kv_dtype": st.sampled_from(["float16", "bfloat16", "int8"]),
    "namespace": st.text(min_size=1, max_size=8),
}


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(sorted(FIELDS) + ["placement", "parent", "tokens"]),
    data=st.data(),
    tokens=st.lists(st.integers(0, 200_000), min_size=1, max_size=40),
)
def test_changing_any_component_changes_the_key(field, data, tokens):
    original = segment_key(BASE, "chained", "root", tokens)
    assert original == segment_key(BASE, "chained", "root", list(tokens))  # deterministic
    if field in FIELDS:
        value = data.draw(FIELDS[field])
        if getattr(BASE, field) == value:
            return
        changed = segment_key(KeyContext(**{**BASE.__dict__, field: value}), "chained", "root", tokens)
    elif field == "placement":
        changed = segment_key(BASE, "independent", "root", tokens)
    elif field == "parent":
        changed = segment_key(BASE, "chained", chain("root", "x" * 64), tokens)
    else:
        index = data.draw(st.integers(0, len(tokens) - 1))
        other = list(tokens)
        other[index] = (other[index] + data.draw(st.integers(1, 1000))) % 200_001
        changed = segment_key(BASE, "chained", "root", other)
    assert changed != original
    assert len(changed) == 64 and int(changed, 16) >= 0


def test_key_is_stable_across_processes():
    """A fixed input gives a fixed key (no per-process salt such as hash())."""
    assert segment_key(BASE, "chained", "root", [1, 2, 3]) == segment_key(BASE, "chained", "root", [1, 2, 3])
    import subprocess
    import sys

    code = (
        "from beacon_rag.segments import KeyContext, segment_key;"
        "print(segment_key(KeyContext('m'*64,'t'*64,{'name':'exact'},'float32',''),'chained','root',[1,2,3]))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == segment_key(BASE, "chained", "root", [1, 2, 3])


def test_invalid_placement_key():
    with pytest.raises(ValueError, match="unknown placement"):
        segment_key(BASE, "sideways", "root", [1])


def test_concurrent_requests_compress_each_segment_once(tiny_models, tmp_path):
    engine = Engine(tiny_models["llama"], cache_dir=tmp_path)
    messages = rag_messages("Where is the key?", ["Under the mat. " * 30, "In the drawer. " * 30])
    results = []

    def ask() -> None:
        results.append(engine.generate(messages, max_new_tokens=4))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    assert engine.compressions == len(results[0].segments)
    assert len({tuple(r.token_ids) for r in results}) == 1
