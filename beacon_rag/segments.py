"""From chat messages to cacheable segments, and the keys they are stored under.

A request is a list of chat messages whose contents may be split into blocks (a retrieved
document, a text block with a cache marker). The model's own chat template decides the text
*between* contents (role headers, end-of-turn markers); we learn that "glue" by rendering the
template with sentinel contents, so every family's template works without special cases.

Cut points, each ending one cached segment:
* after every document block and every block marked ``cache=True``;
* after every complete message except the last (a conversation turn: history that later
  requests will share).
Whatever follows the last cut (the question and the generation prompt) is the *tail*,
prefilled live on every request. The prompt's token ids are the concatenation of the
segments' ids and the tail's ids: that is the sequence "a plain prefill" means in tests.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from beacon_rag.models import LoadedModel

KEY_FORMAT_VERSION = 1
ROOT_CONTEXT = "root"

SegmentKind = Literal["context", "document", "tail"]
Placement = Literal["chained", "independent"]
PLACEMENTS: tuple[str, ...] = ("chained", "independent")


@dataclass(frozen=True)
class Block:
    """A piece of a message's content.

    ``document`` marks a retrieved document (cached on its own, placeable in any order under
    independent placement); ``cache`` marks the end of a reusable prefix (as Anthropic-style
    ``cache_control`` markers do). ``id`` only serves error messages and statistics.
    """

    text: str
    document: bool = False
    cache: bool = False
    id: str | None = None


@dataclass(frozen=True)
class Message:
    role: str
    content: str | Sequence[Block]

    def blocks(self) -> list[Block]:
        return [Block(self.content)] if isinstance(self.content, str) else list(self.content)


@dataclass
class Segment:
    kind: SegmentKind
    text: str
    token_ids: list[int] = field(default_factory=list)
    label: str | None = None


class EmptyDocumentError(ValueError):
    """A document with no text would cache nothing and usually means a loading bug upstream."""


_SENTINEL = "\x00beacon-rag-{}\x00"


def render_glue(lm: LoadedModel, roles: Sequence[str], add_generation_prompt: bool) -> list[str]:
    """Text the chat template puts before, between and after ``len(roles)`` message contents."""
    tokenizer = lm.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        # A base model without a template: plain "role: content" lines.
        glue = [f"{roles[0]}: "] + [f"\n{role}: " for role in roles[1:]] + ["\n"]
        if add_generation_prompt:
            glue[-1] += "assistant: "
        return glue
    sentinels = [_SENTINEL.format(i) for i in range(len(roles))]
    rendered = tokenizer.apply_chat_template(
        [{"role": role, "content": s} for role, s in zip(roles, sentinels)],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    glue: list[str] = []
    rest = rendered
    for sentinel in sentinels:
        before, found, rest = rest.partition(sentinel)
        if not found or sentinel in rest:
            raise ValueError(
                f"the chat template of {lm.name} does not place each message content verbatim once; "
                "beacon-rag cannot find segment boundaries in it"
            )
        glue.append(before)
    glue.append(rest)
    return glue


def build_segments(lm: LoadedModel, messages: Sequence[Message]) -> tuple[list[Segment], Segment]:
    """Cut a conversation into cacheable segments (tokenized) and the live tail."""
    if not messages:
        raise ValueError("no messages: a request needs at least one message")
    roles = [m.role for m in messages]
    add_generation_prompt = roles[-1] != "assistant"
    try:
        glue = render_glue(lm, roles, add_generation_prompt)
    except Exception as err:  # templates that reject a system role: fold it into the first user turn
        if roles[0] != "system" or len(messages) < 2:
            raise ValueError(f"the chat template of {lm.name} rejected these roles {roles}: {err}") from err
        first = messages[1]
        merged = Message(first.role, [Block(_text_of(messages[0]) + "\n\n"), *first.blocks()])
        return build_segments(lm, [merged, *messages[2:]])

    segments: list[Segment] = []
    buffer: list[str] = [glue[0]]

    def flush(kind: SegmentKind, label: str | None = None) -> None:
        text = "".join(buffer)
        buffer.clear()
        if text:
            segments.append(Segment(kind, text, label=label))

    last = len(messages) - 1
    for index, message in enumerate(messages):
        for position, block in enumerate(message.blocks()):
            if block.document:
                if not block.text.strip():
                    name = block.id or f"message {index} block {position}"
                    raise EmptyDocumentError(f"document {name!r} is empty or whitespace only")
                flush("context")  # the header before a document is shared context, not the document
                buffer.append(block.text)
                flush("document", block.id)
            else:
                buffer.append(block.text)
                if block.cache:
                    flush("context", block.id)
        buffer.append(glue[index + 1])
        if index < last:
            flush("context")
    tail = Segment("tail", "".join(buffer))
    if not tail.text and segments:
        # Generation needs at least one live token to produce logits from.
        tail = segments.pop()
        tail.kind = "tail"
    for segment in [*segments, tail]:
        segment.token_ids = lm.encode(segment.text)
    return [s for s in segments if s.token_ids], tail


def _text_of(message: Message) -> str:
    return "".join(block.text for block in message.blocks())


@dataclass(frozen=True)
class KeyContext:
    """Everything about the engine that a key must cover besides the segment's own tokens."""

    model_fingerprint: str
    tokenizer_digest: str
    compressor: dict[str, Any]
    kv_dtype: str
    namespace: str = ""

    def header(self, placement: str, parent: str) -> dict[str, Any]:
        return {
            "format_version": KEY_FORMAT_VERSION,
            "model": self.model_fingerprint,
            "tokenizer": self.tokenizer_digest,
            "compressor": self.compressor,
            "kv_dtype": self.kv_dtype,
            "placement": placement,
            "parent": parent,
            "namespace": self.namespace,
        }


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def segment_key(context: KeyContext, placement: str, parent: str, token_ids: Sequence[int]) -> str:
    """sha256 over the canonical header and the token ids (DESIGN.md invariant 1).

    Token ids are hashed as little-endian uint32 so the key does not depend on how Python
    prints numbers; ``hash()`` is never used (it is salted per process).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; use one of {PLACEMENTS}")
    ids = array("I", token_ids)
    if ids.itemsize != 4:  # pragma: no cover - every mainstream platform has 4-byte unsigned int
        ids = array("L", token_ids)
    if array("I", [1]).tobytes() != (1).to_bytes(4, "little"):  # pragma: no cover - big-endian hosts
        ids.byteswap()
    h = hashlib.sha256()
    h.update(canonical_json(context.header(placement, parent)))
    h.update(b"\x00tokens\x00")
    h.update(ids.tobytes())
    return h.hexdigest()


def chain(context_key: str, segment_key_: str) -> str:
    """The identity of 'everything so far' after appending a segment (a hash chain, as vLLM's)."""
    return hashlib.sha256(f"{context_key}|{segment_key_}".encode()).hexdigest()
