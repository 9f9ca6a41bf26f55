"""LangChain integration of beacon-rag: local models that cache each document and each turn once.

Public API:

* :class:`ChatBeaconRAG` (chat model) and :class:`BeaconRAG` (text completion);
* :func:`documents_to_message` / :func:`documents_to_messages`: a retriever's Documents as one
  ``text-plain`` block each, so every document is its own cached segment;
* :class:`BeaconRAGRetriever`: retrieval over beacon-rag's FAISS ``DocumentIndex`` whose
  Documents carry their content hash and cache keys, so retrieval lands on cached KV;
* :class:`DocumentRegistrationHandler` and ``model.register_documents`` /
  ``model.document_registrar()``: the fallback for unmodified chains that join documents into
  one string.
"""

from langchain_beacon_rag.callbacks import DocumentRegistrationHandler
from langchain_beacon_rag.chat_models import ChatBeaconRAG
from langchain_beacon_rag.llms import BeaconRAG
from langchain_beacon_rag.messages import (
    DocumentRegistry,
    documents_to_message,
    documents_to_messages,
    to_beacon_messages,
)
from langchain_beacon_rag.retrievers import BeaconRAGRetriever

__version__ = "0.1.0"

__all__ = [
    "BeaconRAG",
    "BeaconRAGRetriever",
    "ChatBeaconRAG",
    "DocumentRegistrationHandler",
    "DocumentRegistry",
    "documents_to_message",
    "documents_to_messages",
    "to_beacon_messages",
]
