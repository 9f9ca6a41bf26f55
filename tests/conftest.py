"""Shared fixtures: the embedded model (real text) and tiny random models (mechanics).

Tiny models borrow the embedded tokenizer (and its chat template), so segment building is the
real thing while forward passes take milliseconds.
"""

from __future__ import annotations

import pytest
import torch

from beacon_rag.models import LoadedModel, load_model, model_from_objects

FAMILIES = ("llama", "qwen2", "mistral")


@pytest.fixture(autouse=True)
def no_shared_redis(monkeypatch):
    """A developer's BEACON_RAG_REDIS_URL must not reach tests (they start their own servers)."""
    monkeypatch.delenv("BEACON_RAG_REDIS_URL", raising=False)


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    return load_model()


def tiny_model(family: str, tokenizer, seed: int = 0, max_positions: int = 4096) -> LoadedModel:
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_positions,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
    }
    config = {
        "llama": lambda: LlamaConfig(**common),
        "qwen2": lambda: Qwen2Config(**common, use_sliding_window=False),
        "mistral": lambda: MistralConfig(**common, sliding_window=None),
    }[family]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init with std 0.02 gives near-uniform logits; widen it so greedy choices are
    # decided by clear margins rather than float noise.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model_from_objects(model, tokenizer, name=f"tiny-{family}-{seed}")


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tiny-model tests on one thread.

    On a 2-core machine that is busy with other work, OpenMP barriers cost milliseconds per 64x64
    matmul (measured: tests/test_beacon.py took 84 s with 2 threads and 7 s with 1). Restored
    afterwards so the embedded-model tests keep both cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models(embedded) -> dict[str, LoadedModel]:
    return {family: tiny_model(family, embedded.tokenizer) for family in FAMILIES}
