"""FAISS retrieval whose entries carry the content hash and cache keys of their documents' KV.

Heavy imports (sentence-transformers, torch) happen only when an embedder is built.
"""

from beacon_rag.index.document_index import (
    INDEX_FORMAT_VERSION,
    DocumentIndex,
    EmbedderMismatchError,
    Hit,
    IndexEntry,
    IndexLoadError,
    content_hash,
)
from beacon_rag.index.embedders import (
    DEFAULT_EMBEDDER_NAME,
    Embedder,
    SentenceTransformerEmbedder,
    default_model_path,
)

__all__ = [
    "DEFAULT_EMBEDDER_NAME",
    "INDEX_FORMAT_VERSION",
    "DocumentIndex",
    "Embedder",
    "EmbedderMismatchError",
    "Hit",
    "IndexEntry",
    "IndexLoadError",
    "SentenceTransformerEmbedder",
    "content_hash",
    "default_model_path",
]
