"""Model loading and fingerprints: the only place that knows where weights come from."""

from beacon_rag.models.loader import (
    SUPPORTED_FAMILIES,
    LoadedModel,
    UnsupportedModelError,
    beacon_rag_home,
    embedded_gguf_path,
    load_model,
    model_from_objects,
    tokenizer_digest,
    weights_digest,
)

__all__ = [
    "SUPPORTED_FAMILIES",
    "LoadedModel",
    "UnsupportedModelError",
    "beacon_rag_home",
    "embedded_gguf_path",
    "load_model",
    "model_from_objects",
    "tokenizer_digest",
    "weights_digest",
]
