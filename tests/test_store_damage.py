"""A damaged diskcache index (the SQLite file itself) is set aside and rebuilt; answers continue."""

from __future__ import annotations

import logging
import os

import torch

from beacon_rag import Engine, rag_messages
from beacon_rag.store import DiskTier, Entry


def entry(seed: int) -> Entry:
    g = torch.Generator().manual_seed(seed)
    return Entry({"keys": torch.randn(2, 3, 4, generator=g)}, {"seed": seed})


def clobber(path: str) -> None:
    """Overwrite the SQLite header and first pages with garbage, as a bad disk or editor would."""
    with open(path, "r+b") as f:
        f.write(os.urandom(4096))


def test_damaged_index_at_open(tmp_path, caplog):
    directory = tmp_path / "kv"
    with DiskTier(directory) as disk:
        disk.put("a" * 64, entry(1))
    clobber(str(directory / "cache.db"))
    caplog.set_level(logging.WARNING)
    with DiskTier(directory) as disk:
        assert disk.get("a" * 64) is None  # gone, not wrong
        disk.put("b" * 64, entry(2))
        assert torch.equal(disk.get("b" * 64).tensors["keys"], entry(2).tensors["keys"])
        assert disk.stats()["rebuilds"] == 1
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert [p.name for p in tmp_path.iterdir() if ".damaged-" in p.name]  # set aside, not deleted


def test_engine_keeps_answering_over_a_damaged_index(tiny_models, tmp_path, caplog):
    lm = tiny_models["llama"]
    messages = rag_messages("What is stored here?", ["The vault holds maps.", "The shed holds oars."])
    engine = Engine(lm, cache_dir=tmp_path / "kv", memory_bytes=0)  # every read goes to disk
    cold = engine.generate(messages, max_new_tokens=5)
    engine.close()
    clobber(str(tmp_path / "kv" / "cache.db"))
    caplog.set_level(logging.WARNING)
    restarted = Engine(lm, cache_dir=tmp_path / "kv", memory_bytes=0)
    first = restarted.generate(messages, max_new_tokens=5)
    assert first.token_ids == cold.token_ids
    assert restarted.store.disk.stats()["rebuilds"] == 1
    second = restarted.generate(messages, max_new_tokens=5)  # the rebuilt index serves hits again
    assert second.token_ids == cold.token_ids and {u.source for u in second.segments} == {"disk"}
