"""Message conversion: which parts of a LangChain prompt become cached blocks (no model needed)."""

from __future__ import annotations

import pytest
from beacon_rag import Block, Message
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.content import create_plaintext_block

from langchain_beacon_rag import DocumentRegistry, documents_to_message, to_beacon_messages

LONG_A = "The lighthouse keeper lights the lamp at dusk and logs every passing ship by name."
LONG_B = "The fish market opens at five; the auction bell rings twice before the first lot."


def test_plaintext_blocks_become_documents_and_cache_control_ends_a_prefix() -> None:
    message = HumanMessage(content=[
        {"type": "text", "text": "Documents:\n\n", "cache_control": {"type": "ephemeral"}},
        create_plaintext_block(text=LONG_A, title="lighthouse", id="a"),
        {"type": "text-plain", "text": LONG_B, "mime_type": "text/plain", "id": "b"},
        {"type": "text", "text": "Question: when?"},
    ])
    [converted] = to_beacon_messages([message])
    assert converted.role == "user"
    blocks = list(converted.content)
    assert blocks[0] == Block("Documents:\n\n", cache=True)
    assert blocks[1] == Block(f"[lighthouse]\n{LONG_A}\n\n", document=True, id="a")
    assert blocks[2] == Block(f"{LONG_B}\n\n", document=True, id="b")
    assert blocks[3] == Block("Question: when?")


def test_extras_cache_control_is_honoured() -> None:
    [converted] = to_beacon_messages([HumanMessage(content=[
        {"type": "text", "text": "prefix", "extras": {"cache_control": {"type": "ephemeral"}}}])])
    assert list(converted.content) == [Block("prefix", cache=True)]


def test_consecutive_same_role_messages_are_merged() -> None:
    messages = [SystemMessage("a"), SystemMessage("b"), HumanMessage("c"), HumanMessage("d"),
                AIMessage("e"), AIMessage("f"), HumanMessage("g")]
    assert to_beacon_messages(messages) == [
        Message("system", "a\n\nb"), Message("user", "c\n\nd"), Message("assistant", "e\n\nf"), Message("user", "g")]


def test_documents_placeholder_and_question_merge_into_one_turn() -> None:
    docs = [Document(LONG_A, metadata={"source": "l.md"}, id="l")]
    [converted] = to_beacon_messages([documents_to_message(docs), HumanMessage("Question: who?")])
    kinds = [(b.document, b.cache) for b in converted.content]
    assert kinds == [(False, True), (True, False), (False, False), (False, False)]
    assert converted.content[1].id == "l" and converted.content[1].text.startswith("[l.md]\n")
    assert converted.content[-1].text == "Question: who?"


def test_reasoning_blocks_are_dropped_and_images_refused() -> None:
    [converted] = to_beacon_messages([AIMessage(content=[{"type": "reasoning", "reasoning": "hmm"},
                                                         {"type": "text", "text": "hi"}])])
    assert converted == Message("assistant", "hi")
    with pytest.raises(ValueError, match="read text only"):
        to_beacon_messages([HumanMessage(content=[{"type": "image", "url": "http://x/y.png"}])])


def test_tool_messages_are_user_text() -> None:
    assert to_beacon_messages([ToolMessage("42", tool_call_id="t")]) == [Message("user", "42")]


def test_registry_cuts_registered_texts_out_of_a_joined_prompt() -> None:
    registry = DocumentRegistry()
    registry.add([Document(LONG_A, id="a"), Document(LONG_B, id="b"), "short"])
    prompt = f"Context:\n{LONG_A}\n\n{LONG_B}\n\nQuestion: when?"
    [converted] = to_beacon_messages([HumanMessage(prompt)], registry)
    blocks = list(converted.content)
    assert [b.text for b in blocks] == ["Context:\n", LONG_A, "\n\n", LONG_B, "\n\nQuestion: when?"]
    assert [b.document for b in blocks] == [False, True, False, True, False]
    assert [b.id for b in blocks if b.document] == ["a", "b"]
    assert "".join(b.text for b in blocks) == prompt  # the model sees exactly the rendered prompt


def test_registry_prefers_the_longer_overlapping_text_and_is_bounded() -> None:
    registry = DocumentRegistry(max_documents=2)
    registry.add([LONG_A, LONG_A + " " + LONG_B])
    pieces = registry.split(Block(f"x {LONG_A} {LONG_B} y"))
    assert [p.document for p in pieces] == [False, True, False]
    registry.add([LONG_B])
    assert len(registry) == 2


def test_documents_to_message_layout() -> None:
    message = documents_to_message(["first document text", Document("second", metadata={"title": "T"})], "Why?")
    types = [part["type"] for part in message.content]
    assert types == ["text", "text-plain", "text-plain", "text"]
    assert message.content[0]["cache_control"] == {"type": "ephemeral"}
    assert message.content[2]["title"] == "T"
    assert message.content[-1]["text"] == "Question: Why?"


def test_construction_is_cheap_and_loads_nothing() -> None:
    from beacon_rag import Engine

    from langchain_beacon_rag import ChatBeaconRAG

    before = Engine.shared_engines()
    ChatBeaconRAG(compressor="beacon", ratio=4, placement="independent", cache_dir="/nonexistent")
    assert Engine.shared_engines() == before


def test_indexed_documents_keep_their_cache_title_hash_and_keys() -> None:
    """Documents from BeaconRAGRetriever carry the title their KV was computed with (possibly
    none, even when a "source" exists) plus their content hash and cache keys."""
    import warnings

    from beacon_rag.index import content_hash

    from langchain_beacon_rag.messages import indexed_documents

    untitled = Document(LONG_A, id="a", metadata={"source": "keeper.md", "cache_title": None,
                                                  "content_hash": content_hash(LONG_A), "cache_keys": ["k1"]})
    titled = Document(LONG_B, id="b", metadata={"cache_title": "Market", "content_hash": content_hash(LONG_B),
                                                "cache_keys": []})
    plain = Document(LONG_B, id="c", metadata={"source": "market.md"})
    message = documents_to_message([untitled, titled, plain], "When?")
    blocks = list(to_beacon_messages([message])[0].content)
    assert blocks[1] == Block(f"{LONG_A}\n\n", document=True, id="a")  # no "[keeper.md]" header
    assert blocks[2] == Block(f"[Market]\n{LONG_B}\n\n", document=True, id="b")
    assert blocks[3] == Block(f"[market.md]\n{LONG_B}\n\n", document=True, id="c")
    assert message.content[1]["extras"] == {"content_hash": content_hash(LONG_A), "cache_keys": ["k1"]}
    assert indexed_documents([message]) == {
        "a": {"content_hash": content_hash(LONG_A), "cache_keys": ["k1"]},
        "b": {"content_hash": content_hash(LONG_B), "cache_keys": []},
    }
    edited = Document(LONG_A + " Edited.", id="a", metadata=untitled.metadata)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert indexed_documents([documents_to_message([edited])]) == {}
    assert any("'a'" in str(w.message) and "content_hash" in str(w.message) for w in caught)
