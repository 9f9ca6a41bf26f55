"""beacon-rag: compute each piece of context's KV once, compress it, keep it, splice it back.

The public API lives here; integrations import only from this module.
"""

from beacon_rag.compressors import Compressor, available_compressors, get_compressor, register_compressor
from beacon_rag.engine import ContextTooLongError, Engine, as_messages, default_cache_dir, rag_messages
from beacon_rag.generation import (
    Generation,
    GenerationStream,
    SamplingParams,
    SegmentUse,
    Usage,
    stream_in_thread,
)
from beacon_rag.kv import CompressedKV, KVContext
from beacon_rag.models import LoadedModel, UnsupportedModelError, load_model
from beacon_rag.segments import Block, EmptyDocumentError, Message

__version__ = "0.1.0"

__all__ = [
    "Block",
    "CompressedKV",
    "Compressor",
    "ContextTooLongError",
    "EmptyDocumentError",
    "Engine",
    "Generation",
    "GenerationStream",
    "KVContext",
    "LoadedModel",
    "Message",
    "SamplingParams",
    "SegmentUse",
    "UnsupportedModelError",
    "Usage",
    "as_messages",
    "available_compressors",
    "default_cache_dir",
    "get_compressor",
    "load_model",
    "rag_messages",
    "register_compressor",
    "stream_in_thread",
]
