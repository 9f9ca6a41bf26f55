"""LangChain messages and Documents -> ``beacon_rag`` messages whose blocks mark what to cache.

Why a converter of our own rather than ``convert_to_openai_messages``: the cache boundaries
*are* the content blocks. A ``text-plain`` block (one retrieved document) must stay a block of
its own so the engine caches it under its own key; a text block carrying Anthropic-style
``cache_control`` must end a reusable prefix. Flattening to strings first would lose both.

For chains nobody wants to rewrite (``create_stuff_documents_chain``, ``format_docs`` joins),
a :class:`DocumentRegistry` remembers retrieved texts and cuts them back out of a rendered
string prompt, so the same documents are still cached one by one.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from beacon_rag import Block, Message
from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.content import create_plaintext_block

# Block types that carry nothing a text-only local model can read and that appear in ordinary
# histories (reasoning traces, tool-call echoes); dropping them is what other text models do.
_SKIPPED_BLOCK_TYPES = frozenset(
    {"reasoning", "thinking", "redacted_thinking", "tool_call", "tool_call_chunk", "tool_use",
     "invalid_tool_call", "server_tool_call", "server_tool_result", "non_standard"}
)
# Multimodal inputs: refusing loudly beats silently answering a question about a missing image.
_UNSUPPORTED_BLOCK_TYPES = frozenset({"image", "image_url", "audio", "video", "file", "input_audio"})

MESSAGE_SEPARATOR = "\n\n"
DEFAULT_PREAMBLE = "Documents:\n\n"
MIN_REGISTERED_CHARS = 32


def role_of(message: BaseMessage) -> str:
    """The chat-template role of a LangChain message (tool output is shown to the model as user text)."""
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ToolMessage):
        return "user"
    if isinstance(message, ChatMessage):
        return {"human": "user", "ai": "assistant", "developer": "system"}.get(message.role, message.role)
    raise ValueError(f"message type {message.type!r} is not supported by beacon-rag")


def document_text(text: str, title: str | None) -> str:
    """How one document is shown to the model; the same layout as ``beacon_rag.rag_messages``
    so a LangChain request and a core ``Engine.ask`` produce identical document tokens."""
    header = f"[{title}]\n" if title else ""
    return f"{header}{text.strip()}\n\n"


def block_label(part: dict[str, Any], position: int) -> str:
    """The segment label of a ``text-plain`` block: its id, else its title, else its position."""
    return str(part.get("id") or part.get("title") or f"block{position}")


def indexed_documents(messages: Sequence[BaseMessage]) -> dict[str, dict[str, Any]]:
    """Segment label -> ``{"content_hash", "cache_keys"}`` of every document block that came from
    an index (``BeaconRAGRetriever``), so a response can say whether each document's KV is the
    one the index recorded for it.

    A block whose text no longer matches its content hash (edited after retrieval) is left out
    with a warning: its KV is still cached by its actual text, but the index's keys do not apply.
    """
    found: dict[str, dict[str, Any]] = {}
    for message in messages:
        if isinstance(message.content, str):
            continue
        for position, part in enumerate(message.content):
            if not isinstance(part, dict) or part.get("type") != "text-plain":
                continue
            extras = part.get("extras") or {}
            expected = extras.get("content_hash") if isinstance(extras, dict) else None
            if not expected or part.get("text") is None:
                continue
            # Imported here: only documents from a DocumentIndex get this far, and by then the
            # retriever has loaded the module; a plain chat call never pays for importing FAISS.
            from beacon_rag.index import content_hash

            label = block_label(part, position)
            if content_hash(part["text"]) != expected:
                warnings.warn(
                    f"document {label!r}: its text does not match the content_hash in its metadata "
                    "(edited after retrieval?); it is cached by its actual text, not under the index's keys",
                    RuntimeWarning,
                    stacklevel=4,
                )
                continue
            found[label] = {"content_hash": expected, "cache_keys": list(extras.get("cache_keys") or [])}
    return found


def _cache_marked(block: dict[str, Any]) -> bool:
    extras = block.get("extras") or {}
    return bool(block.get("cache_control") or (isinstance(extras, dict) and extras.get("cache_control")))


def content_blocks(content: str | list[Any], registry: DocumentRegistry | None = None) -> list[Block]:
    """Blocks of one message's content: documents, cache markers and plain text."""
    raw: list[Block] = []
    if isinstance(content, str):
        raw.append(Block(content))
    else:
        for position, part in enumerate(content):
            if isinstance(part, str):
                raw.append(Block(part))
                continue
            if not isinstance(part, dict):
                raise TypeError(f"unexpected content part {part!r}")
            kind = part.get("type")
            if kind == "text-plain":
                text = part.get("text")
                if text is None:
                    raise ValueError("a text-plain block needs inline 'text' (url/base64/file_id are not fetched)")
                title = part.get("title")
                raw.append(Block(document_text(text, title), document=True, id=block_label(part, position)))
            elif kind == "text" or (kind is None and "text" in part):
                raw.append(Block(str(part.get("text", "")), cache=_cache_marked(part), id=part.get("id")))
            elif kind in _SKIPPED_BLOCK_TYPES:
                continue
            elif kind in _UNSUPPORTED_BLOCK_TYPES:
                raise ValueError(f"content blocks of type {kind!r} are not supported: beacon-rag models read text only")
            else:
                raise ValueError(f"unknown content block type {kind!r}")
    if registry is None or not len(registry):
        return raw
    out: list[Block] = []
    for block in raw:
        out.extend(block if block.document else registry.split(block))
    return out


def to_beacon_messages(messages: Sequence[BaseMessage], registry: DocumentRegistry | None = None) -> list[Message]:
    """Convert and merge consecutive same-role messages.

    Merging matters twice: many chat templates reject two user turns in a row, and a
    ``MessagesPlaceholder`` of documents followed by a ``("human", "{question}")`` line should be
    one user turn (documents first, question last) so the question stays in the uncached tail.
    """
    out: list[tuple[str, list[Block]]] = []
    for message in messages:
        role = role_of(message)
        blocks = content_blocks(message.content, registry)  # type: ignore[arg-type]
        if out and out[-1][0] == role:
            out[-1][1].append(Block(MESSAGE_SEPARATOR))
            out[-1][1].extend(blocks)
        else:
            out.append((role, list(blocks)))
    return [Message(role, _simplify(blocks)) for role, blocks in out]


def _simplify(blocks: list[Block]) -> str | list[Block]:
    """A message made only of plain blocks becomes one string (the engine's common, cheapest path)."""
    if all(not b.document and not b.cache for b in blocks):
        return "".join(b.text for b in blocks)
    return blocks


class DocumentRegistry:
    """Texts of retrieved documents, found again verbatim inside rendered string prompts.

    Bounded (least recently registered forgotten first) so a long-running app does not grow
    without limit; texts shorter than ``min_chars`` are ignored because short strings match by
    accident ("Yes.", a title) and would split prompts at random places.
    """

    def __init__(self, max_documents: int = 4096, min_chars: int = MIN_REGISTERED_CHARS) -> None:
        self.max_documents = max_documents
        self.min_chars = min_chars
        self._texts: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, documents: Iterable[Document | str]) -> None:
        with self._lock:
            for doc in documents:
                text = doc.page_content if isinstance(doc, Document) else str(doc)
                label = (doc.id or doc.metadata.get("source") or doc.metadata.get("title")) if isinstance(
                    doc, Document) else None
                text = text.strip()
                if len(text) < self.min_chars:
                    continue
                self._texts[text] = str(label) if label is not None else None
                self._texts.move_to_end(text)
                while len(self._texts) > self.max_documents:
                    self._texts.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._texts.clear()

    def split(self, block: Block) -> list[Block]:
        """Cut every registered text out of ``block`` as a document block; the rest stays plain.

        Longer texts are matched first and matches never overlap, so a document that contains
        another registered one is kept whole. The block's ``cache`` marker moves to its last piece.
        """
        text = block.text
        with self._lock:
            candidates = sorted(self._texts.items(), key=lambda item: -len(item[0]))
        spans: list[tuple[int, int, str | None]] = []
        for needle, label in candidates:
            if len(needle) > len(text):
                continue
            start = text.find(needle)
            while start >= 0:
                end = start + len(needle)
                if all(end <= s or start >= e for s, e, _ in spans):
                    spans.append((start, end, label))
                start = text.find(needle, end)
        if not spans:
            return [block]
        spans.sort()
        pieces: list[Block] = []
        cursor = 0
        for start, end, label in spans:
            if start > cursor:
                pieces.append(Block(text[cursor:start]))
            pieces.append(Block(text[start:end], document=True, id=label))
            cursor = end
        if cursor < len(text):
            pieces.append(Block(text[cursor:]))
        if block.cache:
            last = pieces[-1]
            pieces[-1] = Block(last.text, document=last.document, cache=True, id=last.id)
        return pieces


def documents_to_message(
    documents: Sequence[Document | str],
    question: str | None = None,
    *,
    preamble: str | None = DEFAULT_PREAMBLE,
) -> HumanMessage:
    """One user message holding each document as its own ``text-plain`` block.

    The preamble is marked with ``cache_control`` so it ends a shared prefix; each document is
    then cached on its own; the question (if given) comes last and is the only part prefilled on
    a repeated request. Without a question, put the message before the question in the prompt
    (``MessagesPlaceholder``): consecutive human messages are merged into one turn.
    """
    content: list[Any] = []
    if preamble:
        content.append({"type": "text", "text": preamble, "cache_control": {"type": "ephemeral"}})
    for index, doc in enumerate(documents):
        if isinstance(doc, Document):
            meta = doc.metadata
            # A retriever over a DocumentIndex names the exact title its cache keys were computed
            # with (possibly none); guessing one from "source" would change the tokens and miss.
            title = meta["cache_title"] if "cache_title" in meta else (meta.get("title") or meta.get("source"))
            content.append(create_plaintext_block(
                text=doc.page_content, title=str(title) if title else None, id=doc.id or f"doc{index}",
                content_hash=meta.get("content_hash"), cache_keys=meta.get("cache_keys") or None))
        else:
            content.append(create_plaintext_block(text=str(doc), id=f"doc{index}"))
    if question is not None:
        content.append({"type": "text", "text": f"Question: {question.strip()}"})
    return HumanMessage(content=content)


def documents_to_messages(preamble: str | None = DEFAULT_PREAMBLE) -> Any:
    """A runnable: a retriever's Documents -> ``[HumanMessage]`` for a ``MessagesPlaceholder``.

    ``retriever | documents_to_messages()`` keeps document boundaries through an ordinary
    ``ChatPromptTemplate`` where ``format_docs`` would have joined them into one string.
    """
    from langchain_core.runnables import RunnableLambda

    return RunnableLambda(lambda docs: [documents_to_message(docs, preamble=preamble)],
                          name="documents_to_messages")
