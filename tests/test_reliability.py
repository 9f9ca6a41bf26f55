"""Issue 8 leftovers: a full disk, payloads of other configurations renamed onto valid keys, budgets."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from beacon_rag import Engine, rag_messages
from beacon_rag.models import UnsupportedModelError
from beacon_rag.models.loader import model_from_objects
from beacon_rag.store import DiskTier

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["The vault code is 7261. " * 4, "The archive closes at noon on Fridays. " * 4]
QUESTION = "What is the vault code?"


def run_full_disk(cache_dir: Path, limit: int) -> tuple[list[dict], dict, str]:
    done = subprocess.run([sys.executable, "-m", "tests.helpers.full_disk", str(cache_dir), str(limit)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return rows[:-1], rows[-1]["disk"], done.stderr


def test_full_disk_warns_once_and_keeps_answering(tmp_path):
    reference, roomy, _ = run_full_disk(tmp_path / "roomy", 0)
    answers, disk, log = run_full_disk(tmp_path / "full", 4096)
    assert [r["tokens"] for r in answers] == [r["tokens"] for r in reference]
    assert disk["out_of_space"] > 0
    assert log.count("no space left") == 1, log[-3000:]  # one clear warning, not one per write
    assert "Traceback" not in log
    # Nothing could be persisted, so the second round is served from RAM.
    assert all(source == "memory" for r in answers if r["round"] == 1 for source in r["sources"])
    assert disk["entries"] == 0 < roomy["entries"]


@pytest.mark.parametrize("other", ["ratio", "compressor", "dtype", "namespace"])
def test_payload_of_another_configuration_renamed_onto_a_key(tiny_models, tmp_path, caplog, other):
    """An entry built under another compressor / ratio / KV dtype / tenant is never served."""
    lm = tiny_models["llama"]
    messages = rag_messages(QUESTION, DOCS)
    # Each case in its own namespace: a bad entry is logged once per key per process.
    ours = {"compressor": "streaming", "compressor_options": {"ratio": 2}, "namespace": f"case-{other}"}
    theirs = {
        "ratio": {"compressor": "streaming", "compressor_options": {"ratio": 4}},
        "compressor": {"compressor": "knorm", "compressor_options": {"ratio": 2}},
        "dtype": dict(ours, kv_dtype=torch.bfloat16),
        "namespace": dict(ours, namespace="tenant-b"),
    }[other]
    clean = Engine(lm, cache_dir=tmp_path / "clean", **ours).generate(messages, max_new_tokens=6)
    foreign = Engine(lm, cache_dir=tmp_path / "shared", **theirs).generate(messages, max_new_tokens=6)
    target = Engine(lm, cache_dir=tmp_path / "shared", **ours)
    keys = target.prepare(messages).uses
    assert {u.key for u in keys}.isdisjoint(u.key for u in foreign.segments)
    with DiskTier(tmp_path / "shared") as disk:  # rename each foreign payload onto the key we will ask for
        for mine, its in zip(keys, foreign.segments):
            disk._cache.set(mine.key, disk._cache.get(its.key))
    target.store.memory.clear()
    caplog.set_level(logging.WARNING)
    again = Engine(lm, cache_dir=tmp_path / "shared", **ours)
    result = again.generate(messages, max_new_tokens=6)
    assert result.token_ids == clean.token_ids
    assert {u.source for u in result.segments} == {"computed"}
    assert any("dropping entry" in r.getMessage() for r in caplog.records)
    # Replaced by good entries: a fresh engine now reads them all from disk.
    third = Engine(lm, cache_dir=tmp_path / "shared", **ours).generate(messages, max_new_tokens=6)
    assert {u.source for u in third.segments} == {"disk"} and third.token_ids == clean.token_ids


def test_negative_budgets_are_refused_by_name(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="memory tier budget .* >= 0 bytes, got -1"):
        Engine(tiny_models["llama"], cache_dir=tmp_path, memory_bytes=-1)
    with pytest.raises(ValueError, match="disk tier budget .* >= 0 bytes, got -5"):
        Engine(tiny_models["llama"], cache_dir=tmp_path, disk_bytes=-5)


def test_invalid_windows_and_ratios_name_the_problem(tiny_models, tmp_path):
    lm = tiny_models["llama"]
    for options, problem in [({"ratio": 3}, "ratio"), ({"ratio": 4, "window": 0}, "window"),
                             ({"ratio": 8, "window": 100}, "window"), ({"ratio": "fast"}, "ratio")]:
        with pytest.raises(ValueError, match=problem):
            Engine(lm, compressor="beacon", compressor_options=options, cache_dir=tmp_path)
    for name in ["streaming", "knorm"]:
        with pytest.raises(ValueError, match="ratio"):
            Engine(lm, compressor=name, compressor_options={"ratio": 0.5}, cache_dir=tmp_path)


def test_mismatched_tokenizer_is_refused(embedded):
    from transformers import AutoModelForCausalLM, LlamaConfig

    small = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=1, num_attention_heads=2,
                                                         num_key_value_heads=1))
    with pytest.raises(UnsupportedModelError, match=r"tokenizer has \d+ tokens but the model embeds only 1000"):
        model_from_objects(small, embedded.tokenizer, name="mismatched")
