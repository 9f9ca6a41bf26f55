"""LangChain's standard unit suite: construction, parameters, serialization (no model load)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.load import dumpd, load
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_beacon_rag import BeaconRAG, ChatBeaconRAG

# The module, not the ``load`` function that ``langchain_core.load`` re-exports under the same name.
lc_load = importlib.import_module("langchain_core.load.load")


@pytest.fixture
def registered_in_core_mapping(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put our classes in langchain-core's serialization allowlist for one test.

    Why: ``test_serdes`` loads with ``allowed_objects="all"``, which admits only classes listed in
    ``langchain_core.load.mapping`` (upstream partners get an entry there, e.g. langchain PR #36510
    for ChatBaseten). A third-party package cannot ship that entry, so the test adds it the same
    way, restored afterwards; users pass ``allowed_objects=[ChatBeaconRAG]`` instead (tested below).
    """
    for cls in (ChatBeaconRAG, BeaconRAG):
        path = tuple(cls.lc_id())
        monkeypatch.setitem(lc_load.ALL_SERIALIZABLE_MAPPINGS, path, path)
    monkeypatch.setattr(lc_load, "_default_class_paths_cache", {})
    yield


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

    @pytest.fixture(autouse=True)
    def _core_mapping(self, registered_in_core_mapping: None) -> None:
        """Every test of the suite sees the allowlist entry (only test_serdes needs it)."""


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
@pytest.mark.parametrize("cls", [ChatBeaconRAG, BeaconRAG])
def test_round_trip_with_an_explicit_allowlist(cls: type[Any]) -> None:
    """How users load a dumped model: name the class, no global registration involved."""
    model = cls(model="/models/example.gguf", compressor="beacon", ratio=4, placement="independent",
                max_tokens=32, temperature=0.5, stop=["\n"])
    data = dumpd(model)
    assert data["id"] == cls.lc_id() and data["kwargs"]["ratio"] == 4
    revived = load(data, allowed_objects=[cls], valid_namespaces=["langchain_beacon_rag"])
    assert type(revived) is cls and revived.model_dump() == model.model_dump()
    with pytest.raises(ValueError, match="not allowed"):
        load(data, allowed_objects="core", valid_namespaces=["langchain_beacon_rag"])
