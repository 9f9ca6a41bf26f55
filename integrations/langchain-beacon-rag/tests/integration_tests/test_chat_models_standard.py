"""LangChain's standard integration suite, run offline on the embedded SmolLM2-135M-Instruct.

``cache_read_input`` and ``cache_creation_input`` are declared so the suite itself checks the
KV-reuse accounting in ``usage_metadata["input_token_details"]``.
"""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, SystemMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_beacon_rag import ChatBeaconRAG, documents_to_message

DOCUMENT = (
    "The harbour ferry leaves the north pier every hour from six in the morning until ten at night. "
    "Tickets are sold on board and cost two crowns for adults."
)


def _call(model: ChatBeaconRAG, messages: list[Any], stream: bool) -> AIMessage:
    if not stream:
        return model.invoke(messages)
    full: AIMessageChunk | None = None
    for chunk in model.stream(messages):
        full = chunk if full is None else full + chunk
    assert full is not None
    return full  # an AIMessageChunk is an AIMessage


class TestChatBeaconRAGIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatBeaconRAG]:
        return ChatBeaconRAG

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Small answers keep the suite to a few minutes on a 2-core CPU.
        return {"max_tokens": 24}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def enable_vcr_tests(self) -> bool:
        # VCR replays HTTP; a local model makes no HTTP calls, so the cassette stays empty and
        # test_stream_time simply streams from the model (no network involved either way).
        return True

    @property
    def model_override_value(self) -> str:
        # The only model available offline is the embedded one; naming it by path still exercises
        # the per-call override path (a second engine lookup, the requested name echoed back).
        from beacon_rag.models import embedded_gguf_path

        return str(embedded_gguf_path())

    @property
    def supported_usage_metadata_details(self) -> dict[str, list[str]]:
        both = ["cache_read_input", "cache_creation_input"]
        return {"invoke": both, "stream": both}

    def _model(self) -> ChatBeaconRAG:
        return self.chat_model_class(**{**self.standard_chat_model_params, **self.chat_model_params,
                                        "max_tokens": 8})

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        """The second of two identical document requests: the document comes from the cache."""
        model = self._model()
        messages = [SystemMessage("Answer from the documents."), documents_to_message([DOCUMENT], "When does the ferry leave?")]
        model.invoke(messages)
        message = _call(model, messages, stream)
        details = message.usage_metadata["input_token_details"]
        assert details["cache_read"] > 0 and details["cache_creation"] == 0, details
        return message

    def invoke_with_cache_creation_input(self, *, stream: bool = False) -> AIMessage:
        """A document never seen before (a fresh id inside it): compressed and stored now."""
        model = self._model()
        fresh = f"{DOCUMENT} Booking reference {uuid.uuid4().hex}."
        message = _call(model, [documents_to_message([fresh], "How much is a ticket?")], stream)
        assert message.usage_metadata["input_token_details"]["cache_creation"] > 0
        return message
