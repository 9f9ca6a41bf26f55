"""End-to-end checks on the embedded SmolLM2-135M-Instruct: real text, real disk, real processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from beacon_rag import Engine, rag_messages
from beacon_rag.bench import quality
from beacon_rag.documents import read_documents, sample_documents_dir
from beacon_rag.models import load_model
from tests.helpers.cli import parse_cli

pytestmark = pytest.mark.embedded

QUESTION = "How tall is the lighthouse on Kestrel Point?"


@pytest.fixture(scope="module")
def sample_docs():
    return read_documents([sample_documents_dir()])


def cli(*args: str, cache_dir) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "beacon_rag.cli", *args, "--cache-dir", str(cache_dir)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_embedded_model_loads_fast_the_second_time(embedded):
    assert embedded.family == "llama" and embedded.num_layers == 30
    assert len(embedded.fingerprint) == 64
    # A second process reuses the converted folder and the remembered fingerprint: no GGUF
    # dequantization and no re-hashing of the weights (checked by what it logs, not by timing,
    # which a busy machine would make flaky).
    done = subprocess.run(
        [sys.executable, "-c", ("import logging; logging.basicConfig(level=logging.DEBUG); "
                                "from beacon_rag.models import load_model; m = load_model(); print(m.fingerprint)")],
        capture_output=True, text=True, check=True,
    )
    assert done.stdout.split()[-1] == embedded.fingerprint
    assert "de-quantizing" not in done.stderr and "converting" not in done.stderr
    assert "hashing weights" not in done.stderr


def test_exact_chained_matches_plain_transformers(embedded, sample_docs, tmp_path):
    engine = Engine(embedded, cache_dir=tmp_path, placement="chained")
    messages = rag_messages(QUESTION, [d.text for d in sample_docs], titles=[d.title for d in sample_docs])
    ids = engine.prompt_token_ids(messages)
    with torch.inference_mode():
        out = embedded.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24,
                                      pad_token_id=embedded.tokenizer.eos_token_id)
    expected = [t for t in out[0, len(ids):].tolist() if t not in embedded.eos_token_ids]
    cold = engine.generate(messages, max_new_tokens=24)
    warm = engine.generate(messages, max_new_tokens=24)
    assert cold.token_ids == expected
    assert warm.token_ids == expected
    assert "31" in cold.text  # the model really read the documents
    assert warm.usage.cache_read_tokens == cold.usage.cache_creation_tokens > 400


def test_cache_hit_across_process_restart(sample_docs, tmp_path):
    args = ("ask", "--docs", str(sample_documents_dir()), "--question", QUESTION, "--json", "--max-tokens", "24")
    cold = cli(*args, cache_dir=tmp_path)
    warm = cli(*args, cache_dir=tmp_path)
    assert cold["usage"]["cache_creation_tokens"] > 400 and cold["usage"]["cache_read_tokens"] == 0
    assert warm["usage"]["cache_read_tokens"] == cold["usage"]["cache_creation_tokens"]
    assert warm["usage"]["cache_creation_tokens"] == 0
    assert warm["answer"] == cold["answer"]


def test_ingest_then_ask_reads_every_document(tmp_path):
    report = cli("ingest", str(sample_documents_dir()), cache_dir=tmp_path)
    assert report["documents"] == 4 and report["compressed"] == 4 and report["failed"] == 0
    again = cli("ingest", str(sample_documents_dir()), cache_dir=tmp_path)
    assert again["compressed"] == 0 and again["already_cached"] == 4
    answer = cli("ask", "--docs", str(sample_documents_dir()), "--question", QUESTION, "--json",
                 "--max-tokens", "8", "--placement", "independent", cache_dir=tmp_path)
    assert answer["usage"]["cache_read_tokens"] >= report["tokens"]
    stats = cli("cache", "stats", cache_dir=tmp_path)
    assert stats["entries"] >= 5
    cleared = cli("cache", "clear", cache_dir=tmp_path)
    assert cleared["cleared_entries"] == stats["entries"]
    assert cli("cache", "stats", cache_dir=tmp_path)["entries"] == 0


def test_shared_model_instance(embedded):
    assert load_model() is embedded


# Beacons only (--keep none): the shipped plug-in otherwise also keeps the documents' numbers raw.
@pytest.mark.parametrize("compressor", [[], ["--compressor", "beacon", "--ratio", "8", "--window", "64", "--keep", "none"]],
                         ids=["exact", "beacon"])
def test_bench_ttft_reports_every_field(tmp_path, compressor):
    done = subprocess.run(
        [sys.executable, "-m", "beacon_rag.cli", "bench", "ttft", "--context-tokens", "256", "--docs", "2",
         "--runs", "1", "--cold-runs", "1", "--json", *compressor],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for field in ("context_tokens", "documents", "question_tokens", "full_prefill_s", "cold_s", "warm_ram_s",
                  "warm_disk_s", "question_only_s", "kv_bytes_per_token", "full_kv_bytes_per_token", "same_answer"):
        assert field in report
    assert 200 < report["context_tokens"] < 320 and report["documents"] == 2
    assert report["full_kv_bytes_per_token"] == 46080  # 30 layers x 3 KV heads x 64 dims x K,V x fp32
    if compressor:  # real bytes: about one slot in eight is kept
        assert report["full_kv_bytes_per_token"] / 9 < report["kv_bytes_per_token"] < report["full_kv_bytes_per_token"] / 6
    else:
        assert report["kv_bytes_per_token"] == report["full_kv_bytes_per_token"]
    assert report["same_answer"] is True


def test_shipped_plugin_beats_its_untrained_copy_on_held_out_text(embedded):
    """Held-out text after a ratio-4 compressed context: the shipped plug-in must keep part of what
    the context told the model, where its untrained copy (beacon projections = the base ones) is
    worse than no context at all. A broken export, a plug-in for another model or a mis-loaded
    tensor would fail here; the unit tests on tiny random models cannot see any of that."""
    args = parse_cli(quality.add_arguments, "--task", "lm-loss", "--methods",
                     "beacon:4,beacon:4:untrained,beacon+none+tail64:8,beacon+none+tail64:8:untrained",
                     "--examples", "2", "--context-tokens", "512")
    report = quality.run(args, lm=embedded)
    shipped, untrained, tailed, untrained_tailed = report["methods"]
    assert shipped["compressor_spec"]["window"] == 256 and "untrained" not in shipped["compressor_spec"]
    assert report["full"] < report["none"]
    assert shipped["gap_recovered"] > 0.1, report
    assert untrained["gap_recovered"] < 0 and shipped["score"] < untrained["score"] - 1.0, report
    # The newest 64 tokens raw after ratio-8 beacons, inside ratio 4's slot budget: the tail must read
    # the trained beacons in front of it (the untrained ones mislead it), and it carries the last
    # words the continuation leans on, which beacons alone blur.
    assert tailed["compressor_spec"]["tail"] == 64 and tailed["kept_slots_per_token"] < 0.25, report
    assert tailed["gap_recovered"] > max(0.5, shipped["gap_recovered"]), report
    assert tailed["score"] < untrained_tailed["score"], report


def test_shipped_plugin_reads_back_pass_keys_through_its_kept_numbers(embedded):
    """The shipped plug-in was trained with numbers kept raw among its beacons (``keep`` in its
    config), and the engine keeps them by default. With them, ratio-4 pass keys come back exactly;
    with beacons alone the same plug-in gets the digits but not their order. A shipped config that
    lost ``keep``, or a kept token placed out of order, would fail here."""
    args = parse_cli(quality.add_arguments, "--task", "passkey", "--methods", "beacon:4,beacon+none:4",
                     "--examples", "2", "--context-tokens", "768")
    report = quality.run(args, lm=embedded)
    kept, beacons_only = report["methods"]
    assert kept["compressor_spec"]["keep"] == "numbers" and "keep" not in beacons_only["compressor_spec"]
    assert kept["score"] == 1.0, report
    assert beacons_only["score"] < 1.0, report
    assert beacons_only["kept_slots_per_token"] < kept["kept_slots_per_token"] < 0.5, report
