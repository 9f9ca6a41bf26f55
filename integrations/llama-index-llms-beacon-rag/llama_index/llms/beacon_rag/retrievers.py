"""Retrieval over beacon-rag's FAISS ``DocumentIndex``, and its embedder as a LlamaIndex embedding.

``DocumentIndexRetriever`` returns ``TextNode``s whose id is the entry id and whose metadata
carries the entry's ``content_hash`` (sha256 of the text) and the cache keys ``precompute``
recorded; the LLM sees only the text (all metadata is excluded from the LLM and embedding views),
so ``BeaconSynthesizer`` renders exactly the document ``DocumentIndex.precompute`` warmed and the
request is a cache hit from the first query on.

``BeaconEmbedding`` wraps ``SentenceTransformerEmbedder`` (the bundled all-MiniLM-L6-v2 by default,
offline) for ``VectorStoreIndex(..., embed_model=BeaconEmbedding())``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

_EMBEDDERS: dict[str | None, Any] = {}
_EMBEDDERS_LOCK = threading.Lock()


def shared_embedder(path: str | None = None) -> Any:
    """One ``SentenceTransformerEmbedder`` per model folder per process (loading one takes seconds)."""
    from beacon_rag.index import SentenceTransformerEmbedder

    with _EMBEDDERS_LOCK:
        embedder = _EMBEDDERS.get(path)
        if embedder is None:
            embedder = SentenceTransformerEmbedder(path)
            _EMBEDDERS[path] = embedder
        return embedder


class BeaconEmbedding(BaseEmbedding):
    """A sentence-transformers model from a local folder (``None``: bundled all-MiniLM-L6-v2).

    Vectors are L2-normalised (cosine == inner product), as in ``DocumentIndex``. Loaded on first use.
    """

    path: str | None = Field(default=None, description="Local sentence-transformers folder; None is the "
                                                        "bundled all-MiniLM-L6-v2.")

    def __init__(self, path: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("model_name", "all-MiniLM-L6-v2" if path is None else str(path))
        super().__init__(path=path, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "BeaconEmbedding"

    @property
    def embedder(self) -> Any:
        return shared_embedder(self.path)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.embedder.embed([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.embedder.embed([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed(texts).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)


def hit_to_node(hit: Any) -> NodeWithScore:
    """A ``beacon_rag.index.Hit`` as a scored ``TextNode`` keyed by the entry id, carrying its hash."""
    metadata = {**hit.metadata, "content_hash": hit.content_hash, "cache_keys": list(hit.cache_keys)}
    keys = list(metadata)
    node = TextNode(
        id_=hit.id,
        text=hit.text,
        metadata=metadata,
        # The model must see the text exactly as precomputed; the metadata is bookkeeping.
        excluded_llm_metadata_keys=keys,
        excluded_embed_metadata_keys=keys,
    )
    return NodeWithScore(node=node, score=hit.score)


class DocumentIndexRetriever(BaseRetriever):
    """LlamaIndex retriever over a ``beacon_rag.index.DocumentIndex`` (exact cosine search).

    The query string is always embedded by the index's own embedder: a ready embedding in the
    query bundle may come from another model of the same dimension, whose scores would be
    meaningless without any error.
    """

    def __init__(self, index: Any, similarity_top_k: int = 4, **kwargs: Any) -> None:
        if similarity_top_k < 1:
            raise ValueError(f"similarity_top_k must be >= 1, got {similarity_top_k}")
        if not hasattr(index, "search") or not hasattr(index, "search_vectors"):
            raise TypeError(f"expected a beacon_rag.index.DocumentIndex, got {type(index).__name__}")
        super().__init__(**kwargs)
        self._index = index
        self._top_k = similarity_top_k

    @property
    def index(self) -> Any:
        return self._index

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self._index.search(query_bundle.query_str, self._top_k)
        return [hit_to_node(hit) for hit in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)


__all__ = ["BeaconEmbedding", "DocumentIndexRetriever", "hit_to_node", "shared_embedder"]
