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


def test_a_plugin_given_by_path_runs_with_the_window_it_was_trained_with(tiny_models, tmp_path):
    """Found 2026-11-23: plug-ins named by path ran in 1,024-token windows although trained in 256."""
    from beacon_rag.bench.quality import build_compressor

    lm = tiny_models["llama"]
    plugin = BeaconPlugin.from_model(lm)
    plugin.config["window"] = 32
    folder = plugin.save(tmp_path / "trained")
    for options in ({"ratio": 4, "plugin": folder}, {"ratio": 4, "plugin": str(folder)}, {"ratio": 4, "plugin": plugin}):
        engine = Engine(lm, compressor="beacon", compressor_options=options, persist=False)
        assert engine.compressor.spec()["window"] == 32
    assert build_compressor("beacon", 4, plugin=str(folder), lm=lm).spec()["window"] == 32
    explicit = Engine(lm, compressor="beacon", compressor_options={"ratio": 4, "plugin": folder, "window": 16},
                      persist=False)
    assert explicit.compressor.spec()["window"] == 16  # the caller's choice still wins


def test_every_shipped_plugin_is_trained_and_within_the_size_budget():
    """The issue's budget for a shipped plug-in is 40 MB: wheels carry it, and a GPU lease carries it
    as a starting point. A larger rank (or full-rank copies) would pass every other test silently."""
    folders = [f for f in beacon_module.shipped_plugins_dir().iterdir() if (f / "beacon_config.json").is_file()]
    assert folders, "no plug-in is shipped"
    for folder in folders:
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        assert size <= 40_000_000, f"{folder.name}: {size:,} bytes"
        config = json.loads((folder / "beacon_config.json").read_text())
        assert config["trained"] is True and config["digest"] and (folder / "TRAINING.md").is_file()
