"""Agent memory whose history stays a cached prefix turn after turn.

LlamaIndex's ``Memory`` keeps a FIFO of recent messages; when it is over its token budget the
oldest messages are flushed to memory blocks, and what the blocks return is put back into the
prompt. With the stock blocks the flushed turns come back summarised, as extracted facts, or as
retrieved snippets inside the system message: the *front* of the prompt changes on every flush,
and with it the cache key of every turn after it (keys are chained), so every cached turn is
lost and the whole history is prefilled again.

``CachedHistoryBlock`` keeps the flushed messages verbatim and returns them as chat messages,
which ``Memory`` puts *before* the active FIFO. The model therefore sees the same append-only
transcript before and after a flush, token for token, and ``BeaconRAG`` (which caches every
complete message as a chained segment) prefills only the newest exchange on each turn. With
``BeaconRAG(compressor="beacon")`` the cached turns are also compressed, so a long history
costs a fraction of its tokens in KV.

Never trim the front: when the transcript outgrows the model window, start a new session.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.memory import BaseMemoryBlock, InsertMethod, Memory

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_NAME = "cached_history"


class CachedHistoryBlock(BaseMemoryBlock[list[ChatMessage]]):
    """Flushed messages kept verbatim, per session, and handed back as chat messages.

    ``priority=0``: ``Memory`` never truncates it (truncating would rewrite the cached prefix).
    """

    name: str = Field(default=DEFAULT_BLOCK_NAME, description="The name of the memory block.")
    description: str | None = Field(
        default="Earlier turns, verbatim, so the conversation prefix (and its cached KV) never changes.")
    priority: int = Field(default=0, description="0: never truncated (truncation would invalidate the cache).")
    max_messages: int | None = Field(
        default=None, gt=0,
        description="Refuse to grow past this many stored messages per session (None: no limit). "
                    "An error, not silent trimming: dropping the oldest turns would change the prefix.")

    _sessions: dict[str, list[ChatMessage]] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> list[ChatMessage]:
        session = str(block_kwargs.get("session_id", ""))
        with self._lock:
            # Copies: Memory edits the messages it returns (it inserts template blocks into them).
            return [message.model_copy(deep=True) for message in self._sessions.get(session, [])]

    async def _aput(self, messages: list[ChatMessage]) -> None:
        with self._lock:
            for message in messages:
                # Memory tags each flushed message with its session id; that is our key. The tag
                # is removed from the stored copy so the message is the one the model saw.
                stored = message.model_copy(deep=True)
                session = str(stored.additional_kwargs.pop("session_id", ""))
                history = self._sessions.setdefault(session, [])
                if self.max_messages is not None and len(history) >= self.max_messages:
                    raise OverflowError(
                        f"memory block {self.name!r} holds {len(history)} messages for session {session!r} "
                        f"(max_messages={self.max_messages}); start a new session instead of trimming, "
                        "which would invalidate every cached turn"
                    )
                history.append(stored)
        logger.debug("stored %d flushed messages", len(messages))

    def messages(self, session_id: str) -> list[ChatMessage]:
        """The flushed messages of one session, oldest first (copies)."""
        with self._lock:
            return [m.model_copy(deep=True) for m in self._sessions.get(session_id, [])]

    def clear(self, session_id: str | None = None) -> None:
        with self._lock:
            if session_id is None:
                self._sessions.clear()
            else:
                self._sessions.pop(session_id, None)


def cached_memory(
    llm: Any,
    *,
    token_limit: int | None = None,
    chat_history_token_ratio: float = 0.7,
    token_flush_size: int | None = None,
    session_id: str | None = None,
    block: CachedHistoryBlock | None = None,
    **kwargs: Any,
) -> Memory:
    """A ``Memory`` set up for KV reuse with ``llm`` (a ``BeaconRAG``).

    * the model's own tokenizer counts tokens (LlamaIndex's default is tiktoken's, another model's);
    * a :class:`CachedHistoryBlock` receives flushed turns, so flushing never changes the prompt;
    * ``insert_method=USER``: template-based blocks (if you add any) go into the latest user turn,
      never the system message, so the first tokens of every request stay the same;
    * ``token_limit`` defaults to the model window minus the answer budget (the prompt
      helper's arithmetic).
    """
    if token_limit is None:
        meta = llm.metadata
        token_limit = max(meta.context_window - meta.num_output, 1)
    return Memory.from_defaults(
        session_id=session_id,
        token_limit=token_limit,
        chat_history_token_ratio=chat_history_token_ratio,
        token_flush_size=token_flush_size if token_flush_size is not None else max(int(token_limit * 0.1), 1),
        tokenizer_fn=llm.tokenizer,
        memory_blocks=[block or CachedHistoryBlock()],
        insert_method=InsertMethod.USER,
        **kwargs,
    )
