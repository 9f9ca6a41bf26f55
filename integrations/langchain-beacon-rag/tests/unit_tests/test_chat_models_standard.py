"""LangChain's standard unit suite: construction, parameters, serialization (no model load)."""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_beacon_rag import ChatBeaconRAG


class TestChatBeaconRAGUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatBeaconRAG]:
        return ChatBeaconRAG

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Not max_tokens: test_standard_params passes it itself next to these.
        return {"compressor": "exact", "placement": "chained"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        # Construction never loads the model, so a path that does not exist is fine here.
        return {"BEACON_RAG_MODEL": "/models/example.gguf"}, {}, {"model": "/models/example.gguf"}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False
