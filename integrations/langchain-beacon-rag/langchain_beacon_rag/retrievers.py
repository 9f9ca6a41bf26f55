"""``BeaconRAGRetriever``: LangChain retrieval over beacon-rag's FAISS ``DocumentIndex``.

Why a retriever of our own rather than a generic vector store: each index entry knows the
sha256 of its text and, after :meth:`BeaconRAGRetriever.precompute`, the engine's cache key(s)
of that document's KV. The retriever puts both into ``Document.metadata`` (``content_hash``,
``cache_keys``) together with the exact title the key was computed with (``cache_title``), and
:func:`~langchain_beacon_rag.documents_to_message` lays each document out exactly as
``precompute`` did. A retrieved document therefore lands on its cached KV by construction, and
the response says so per segment (``indexed_key``), instead of hoping that a joined string
re-tokenizes the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from beacon_rag.index import DocumentIndex, Embedder
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM = "Answer the question using the documents."
"""The system prompt ``precompute`` warms documents after; use the same one in the chain's prompt
(it is also ``beacon_rag.rag_messages``'s default, so ``Engine.ask`` shares the cache)."""

# Metadata keys the retriever adds; an index entry's own metadata must not use them.
RESERVED_METADATA = ("content_hash", "cache_keys", "cache_title", "score")


class BeaconRAGRetriever(BaseRetriever):
    """Top-``k`` cosine search over a :class:`beacon_rag.index.DocumentIndex`.

    Each returned ``Document`` has ``id`` = the entry id and, besides the entry's own metadata,
    ``content_hash`` (sha256 of ``page_content``), ``cache_keys`` (the engine's segment keys of
    its KV, empty until :meth:`precompute`), ``cache_title`` (the title its KV was computed with,
    or ``None``) and ``score`` (cosine similarity).

    Example::

        retriever = BeaconRAGRetriever.from_texts(texts, metadatas=[{"title": t} for t in titles], k=3)
        llm = ChatBeaconRAG(placement="independent")
        retriever.precompute(llm)                 # every document compressed once, keys recorded
        chain = RunnableParallel(documents=retriever | documents_to_messages(),
                                 question=RunnablePassthrough()) | prompt | llm
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: DocumentIndex
    """The FAISS index (shared, not copied: ``with_config``/``bind`` copies see the same index)."""
    k: int = Field(default=4, ge=1)
    """How many documents to return."""
    score_threshold: float | None = None
    """Drop hits whose cosine similarity is below this (``None``: keep all ``k``)."""
    title_key: str = "title"
    """The metadata key holding a document's title; must match the one ``precompute`` used."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
        *,
        embedder: Embedder | None = None,
        **kwargs: Any,
    ) -> BeaconRAGRetriever:
        """A new index over ``texts`` (embedded now; ids default to the content hash)."""
        index = DocumentIndex(embedder)
        retriever = cls(index=index, **kwargs)
        retriever.index.add(list(texts), metadatas, ids)
        return retriever

    @classmethod
    def from_documents(cls, documents: Sequence[Document], *, embedder: Embedder | None = None,
                       **kwargs: Any) -> BeaconRAGRetriever:
        """A new index over LangChain ``Document``s (their ids and metadata are kept)."""
        retriever = cls(index=DocumentIndex(embedder), **kwargs)
        retriever.add_documents(documents)
        return retriever

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, embedder: Embedder | None = None,
             **kwargs: Any) -> BeaconRAGRetriever:
        """Open an index saved with ``retriever.index.save(folder)`` (recorded cache keys included)."""
        return cls(index=DocumentIndex.load(folder, embedder), **kwargs)

    def add_documents(self, documents: Sequence[Document]) -> list[str]:
        """Embed and store LangChain ``Document``s; returns their index ids.

        A document without an id gets its content hash as id; an already indexed text keeps the
        id it has. Metadata must be JSON-serialisable (the index saves it as JSON).
        """
        documents = list(documents)
        for position, doc in enumerate(documents):
            if not isinstance(doc, Document):
                raise TypeError(f"document {position} is a {type(doc).__name__}, not a langchain Document")
            clash = [key for key in RESERVED_METADATA if key in doc.metadata]
            if clash:
                raise ValueError(f"document {position} ({doc.id!r}) has metadata {clash} that the retriever "
                                 "sets itself; rename those keys")
        ids: list[str] | None = None
        if any(doc.id for doc in documents):
            if not all(doc.id for doc in documents):
                raise ValueError("give every document an id, or none (ids then default to the content hash)")
            ids = [str(doc.id) for doc in documents]
        return self.index.add([d.page_content for d in documents], [dict(d.metadata) for d in documents], ids)

    # ------------------------------------------------------------------ cache keys
    def precompute(self, model: Any, system: str | None = DEFAULT_SYSTEM, *, progress: bool = False
                   ) -> dict[str, int]:
        """Compress every indexed document into ``model``'s cache and record its cache keys.

        ``model`` is a :class:`ChatBeaconRAG` or :class:`BeaconRAG` (its shared engine is used).
        Documents are warmed after ``system`` and the ``Documents:`` preamble, as
        ``documents_to_message`` lays them out, so a chain with the same system prompt reads them
        from the cache on its first question. With ``placement="independent"`` every retrieved
        document then hits; with ``"chained"`` a document's KV depends on those before it, so only
        the first retrieved document can match. Returns counts: documents, computed, cached, failed.
        """
        engine = getattr(model, "engine", None)
        if engine is None:
            raise TypeError(f"precompute needs a ChatBeaconRAG or BeaconRAG model, got {type(model).__name__}")
        return self.index.precompute(engine, system, title_key=self.title_key, progress=progress)

    # ------------------------------------------------------------------ retrieval
    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun
                                ) -> list[Document]:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the retriever query must be a non-empty string")
        documents = []
        for hit in self.index.search(query, self.k):
            if self.score_threshold is not None and hit.score < self.score_threshold:
                continue
            title = hit.metadata.get(self.title_key)
            metadata = {
                **hit.metadata,
                "content_hash": hit.content_hash,
                "cache_keys": list(hit.cache_keys),
                "cache_title": None if title is None else str(title),
                "score": hit.score,
            }
            documents.append(Document(page_content=hit.text, id=hit.id, metadata=metadata))
        logger.debug("retrieved %d documents for %r", len(documents), query[:80])
        return documents
