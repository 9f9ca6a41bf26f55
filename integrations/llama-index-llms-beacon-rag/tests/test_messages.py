"""ChatMessage -> beacon_rag Message conversion (no model needed)."""

from __future__ import annotations

import pytest
from beacon_rag import Block, Message
from llama_index.core.base.llms.types import (
    CacheControl,
    CachePoint,
    ChatMessage,
    CitableBlock,
    DocumentBlock,
    ImageBlock,
    TextBlock,
    ThinkingBlock,
)

from llama_index.llms.beacon_rag import to_beacon_messages
from llama_index.llms.beacon_rag.messages import document_text

CACHE = CachePoint(cache_control=CacheControl(type="ephemeral"))


def test_plain_messages_become_strings_and_roles_map() -> None:
    out = to_beacon_messages([
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Hi"),
        ChatMessage(role="assistant", content="Hello."),
        ChatMessage(role="tool", content="42"),
    ])
    assert out == [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello."),
                   Message("user", "42")]


def test_cache_point_ends_a_segment_at_the_block_before_it() -> None:
    out = to_beacon_messages([ChatMessage(role="user", blocks=[
        TextBlock(text="Long shared instructions."), CACHE, TextBlock(text="The question?")])])
    assert out[0].content == [Block("Long shared instructions.", cache=True), Block("The question?")]


def test_cache_point_first_in_a_message_marks_nothing() -> None:
    out = to_beacon_messages([ChatMessage(role="user", blocks=[CACHE, TextBlock(text="Q?")])])
    assert out == [Message("user", "Q?")]


def test_citable_and_text_document_blocks_become_documents() -> None:
    out = to_beacon_messages([ChatMessage(role="user", blocks=[
        CitableBlock(title="ferry.md", source="node-1", content=[TextBlock(text=" The ferry leaves at six. ")]),
        DocumentBlock(data=b"The market opens at five.", document_mimetype="text/plain", title="market"),
        DocumentBlock(data=b"Untitled text.", document_mimetype="text/plain"),
        TextBlock(text="Question: when?"),
    ])])
    blocks = out[0].content
    assert blocks[0] == Block("[ferry.md]\nThe ferry leaves at six.\n\n", document=True, id="node-1")
    assert blocks[1] == Block(document_text("The market opens at five.", "market"), document=True, id="market")
    assert blocks[2].document and blocks[2].text == "Untitled text.\n\n"  # no placeholder "input_document" header
    assert blocks[3] == Block("Question: when?")


def test_consecutive_same_role_messages_are_merged() -> None:
    out = to_beacon_messages([ChatMessage(role="user", content="a"), ChatMessage(role="user", content="b")])
    assert out == [Message("user", "a\n\nb")]


def test_thinking_blocks_are_dropped() -> None:
    out = to_beacon_messages([ChatMessage(role="assistant", blocks=[ThinkingBlock(content="hmm"),
                                                                    TextBlock(text="Yes.")])])
    assert out == [Message("assistant", "Yes.")]


def test_images_and_binary_documents_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'image'"):
        to_beacon_messages([ChatMessage(role="user", blocks=[ImageBlock(url="http://example.invalid/x.png")])])
    with pytest.raises(ValueError, match="application/pdf"):
        to_beacon_messages([ChatMessage(role="user", blocks=[
            DocumentBlock(data=b"%PDF-1.4 ...", document_mimetype="application/pdf", title="report")])])


def test_no_messages_and_wrong_types_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="no messages"):
        to_beacon_messages([])
    with pytest.raises(TypeError, match="ChatMessage"):
        to_beacon_messages([{"role": "user", "content": "hi"}])  # type: ignore[list-item]
