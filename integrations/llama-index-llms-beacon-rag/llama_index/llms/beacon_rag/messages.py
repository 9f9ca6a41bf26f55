"""LlamaIndex ``ChatMessage``s -> ``beacon_rag`` messages whose blocks mark what to cache.

Why our own converter rather than ``messages_to_prompt``: the cache boundaries *are* the content
blocks. A document (``DocumentBlock`` with text, or a ``CitableBlock``) must stay a block of its
own so the engine caches it under its own key, and a ``CachePoint`` must end a reusable prefix.
Flattening to one string first would lose both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from llama_index.core.base.llms.types import (
    AudioBlock,
    CachePoint,
    ChatMessage,
    CitableBlock,
    CitationBlock,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
    VideoBlock,
)

from beacon_rag import Block, Message

logger = logging.getLogger(__name__)

MESSAGE_SEPARATOR = "\n\n"
# DocumentBlock fills in this title when none is given; it names nothing, so it gets no header.
_PLACEHOLDER_TITLE = "input_document"

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    # A local text model has no tool channel: tool output is shown as user text, as other
    # text-only integrations do.
    MessageRole.TOOL: "user",
    MessageRole.FUNCTION: "user",
}


def document_text(text: str, title: str | None) -> str:
    """How one document is shown to the model; the layout of ``beacon_rag.rag_messages`` (and so
    of ``DocumentIndex.precompute``), so a LlamaIndex request hits caches the core computed."""
    header = f"[{title}]\n" if title else ""
    return f"{header}{text.strip()}\n\n"


def role_of(message: ChatMessage) -> str:
    role = message.role
    try:
        return _ROLES[MessageRole(role)]
    except (ValueError, KeyError) as err:
        raise ValueError(f"message role {role!r} is not supported by beacon-rag") from err


def _document_block_text(block: DocumentBlock) -> str:
    """The text of a text document; binary formats (PDF, DOCX) are refused, not guessed at."""
    mimetype = block.document_mimetype or ""
    if mimetype and not (mimetype.startswith("text/") or mimetype in ("application/json", "application/xml")):
        raise ValueError(
            f"document block {block.title!r} has type {mimetype!r}: beacon-rag models read text only; "
            "extract the text first (for example with a LlamaIndex reader)"
        )
    raw = block.resolve_document().read()
    data = raw if isinstance(raw, bytes) else str(raw).encode()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"document block {block.title!r} is not UTF-8 text (byte {err.start})") from err


def content_blocks(message: ChatMessage) -> list[Block]:
    """Blocks of one message: documents, cache markers and plain text, in order."""
    out: list[Block] = []
    for position, block in enumerate(message.blocks):
        if isinstance(block, TextBlock):
            out.append(Block(block.text))
        elif isinstance(block, CachePoint):
            # "Cache up to here": the block before it ends a segment. A CachePoint first in a
            # message needs nothing: the previous complete message is a cut point already.
            if out:
                out[-1] = replace(out[-1], cache=True)
        elif isinstance(block, CitableBlock):
            parts = []
            for inner in block.content:
                if not isinstance(inner, TextBlock):
                    raise ValueError(  # noqa: TRY004 - unsupported content (a value), as for images
                        f"citable block {block.title!r} holds a {inner.block_type!r} block; "
                        "beacon-rag models read text only")
                parts.append(inner.text)
            text = "".join(parts)
            out.append(Block(document_text(text, block.title or None), document=True,
                             id=block.source or block.title or f"block{position}"))
        elif isinstance(block, DocumentBlock):
            title = block.title if block.title and block.title != _PLACEHOLDER_TITLE else None
            out.append(Block(document_text(_document_block_text(block), title), document=True,
                             id=title or f"block{position}"))
        elif isinstance(block, (ThinkingBlock, ToolCallBlock, CitationBlock)):
            # Reasoning traces, tool-call echoes and citation metadata from earlier answers: nothing
            # a plain text model can read; dropping them is what other text models do.
            continue
        elif isinstance(block, (ImageBlock, AudioBlock, VideoBlock)):
            raise ValueError(  # noqa: TRY004 - unsupported content (a value), not a wrong argument type
                f"content blocks of type {block.block_type!r} are not supported: "
                "beacon-rag models read text only")
        else:
            raise ValueError(  # noqa: TRY004 - an unknown content block is bad content
                f"unknown content block type {getattr(block, 'block_type', type(block).__name__)!r}")
    return out


def to_beacon_messages(messages: Sequence[ChatMessage]) -> list[Message]:
    """Convert and merge consecutive same-role messages.

    Merging matters because many chat templates reject two user turns in a row, and LlamaIndex
    produces them (a memory's last user message followed by a template's user message).
    """
    if not messages:
        raise ValueError("no messages: a request needs at least one message")
    merged: list[tuple[str, list[Block]]] = []
    for message in messages:
        if not isinstance(message, ChatMessage):
            raise TypeError(f"expected llama_index ChatMessage, got {type(message).__name__}")
        role = role_of(message)
        blocks = content_blocks(message)
        if merged and merged[-1][0] == role:
            merged[-1][1].append(Block(MESSAGE_SEPARATOR))
            merged[-1][1].extend(blocks)
        else:
            merged.append((role, blocks))
    return [Message(role, _simplify(blocks)) for role, blocks in merged]


def _simplify(blocks: list[Block]) -> str | list[Block]:
    """A message of plain blocks becomes one string (the engine's common, cheapest path)."""
    if all(not b.document and not b.cache for b in blocks):
        return "".join(b.text for b in blocks)
    return blocks
