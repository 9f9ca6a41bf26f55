"""LlamaIndex integration of beacon-rag: a local LLM that caches each node and each turn once.

Public API:

* :class:`BeaconRAG`: the ``CustomLLM`` (complete / chat, streaming, async; usage with cached
  tokens in ``raw["usage"]`` and ``additional_kwargs``);
* :class:`BeaconSynthesizer`: a response synthesizer that sends one cached segment per node;
* :class:`CachedHistoryBlock` and :func:`cached_memory`: a ``Memory`` whose history stays a
  cached prefix turn after turn;
* :class:`DocumentIndexRetriever` over ``beacon_rag.index.DocumentIndex`` (nodes carry the
  content hash) and :class:`BeaconEmbedding` (the bundled all-MiniLM-L6-v2 for ``VectorStoreIndex``).
"""

from llama_index.llms.beacon_rag.base import BeaconRAG
from llama_index.llms.beacon_rag.memory import CachedHistoryBlock, cached_memory
from llama_index.llms.beacon_rag.messages import to_beacon_messages
from llama_index.llms.beacon_rag.retrievers import BeaconEmbedding, DocumentIndexRetriever, hit_to_node
from llama_index.llms.beacon_rag.synthesizer import BeaconSynthesizer, node_block, rag_chat_messages

__version__ = "0.1.0"

__all__ = [
    "BeaconEmbedding",
    "BeaconRAG",
    "BeaconSynthesizer",
    "CachedHistoryBlock",
    "DocumentIndexRetriever",
    "cached_memory",
    "hit_to_node",
    "node_block",
    "rag_chat_messages",
    "to_beacon_messages",
]
