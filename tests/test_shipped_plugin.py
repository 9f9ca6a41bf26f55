"""`--compressor beacon` picks the plug-in shipped for the model (matched on its weights fingerprint)."""

from __future__ import annotations

import json

import torch

from beacon_rag import Engine
from beacon_rag.beacon import BeaconPlugin
from beacon_rag.compressors import beacon as beacon_module


def test_shipped_plugin_is_used_only_for_its_base_model(tiny_models, embedded, tmp_path, monkeypatch):
    from conftest import tiny_model

    lm = tiny_models["llama"]
    plugin = BeaconPlugin.from_model(lm)
    with torch.no_grad():
        plugin.beacon_embed.add_(0.5)  # a "trained" plug-in that differs from the untrained copy
    folder = plugin.save(tmp_path / "plugins" / "tiny")
    config_path = folder / "beacon_config.json"
    config = json.loads(config_path.read_text())
    config["window"] = 32
    config["trained"] = True  # what the trainer records
    config_path.write_text(json.dumps(config))
    monkeypatch.setattr(beacon_module, "shipped_plugins_dir", lambda: tmp_path / "plugins")

    engine = Engine(lm, compressor="beacon", compressor_options={"ratio": 4}, persist=False)
    spec = engine.compressor.spec()
    assert spec["plugin"] == BeaconPlugin.load(folder, lm).digest() and spec["window"] == 32
    assert "untrained" not in spec
    explicit = Engine(lm, compressor="beacon", compressor_options={"ratio": 4, "window": 16}, persist=False)
    assert explicit.compressor.spec()["window"] == 16  # the caller's choice wins

    other = tiny_model("llama", embedded.tokenizer, seed=9)  # same shapes, other weights
    assert Engine(other, compressor="beacon", compressor_options={"ratio": 4}, persist=False
                  ).compressor.spec()["plugin"] == "untrained-v1"
