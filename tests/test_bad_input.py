"""Bad input gets a clear error that names the problem, and nothing already cached is lost."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from conftest import tiny_model

from beacon_rag import Block, ContextTooLongError, EmptyDocumentError, Engine, Message, rag_messages
from beacon_rag.documents import DocumentError, read_document
from beacon_rag.models import UnsupportedModelError, load_model
from beacon_rag.store import DiskTier

DOCS = ["The vault code is 7261.", "The archive closes at noon on Fridays."]
QUESTION = "What is the vault code?"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beacon_rag.cli", *args], capture_output=True, text=True, check=False)


def test_empty_document_is_refused(tiny_models, tmp_path):
    engine = Engine(tiny_models["llama"], cache_dir=tmp_path)
    with pytest.raises(EmptyDocumentError, match="empty"):
        engine.generate(rag_messages(QUESTION, ["  \n\t "]), max_new_tokens=2)
    with pytest.raises(EmptyDocumentError, match="'notes'"):
        engine.generate([Message("user", [Block("", document=True, id="notes"), Block("q")])], max_new_tokens=2)


def test_document_longer_than_window(embedded, tiny_models, tmp_path):
    lm = tiny_model("llama", embedded.tokenizer, max_positions=256)
    engine = Engine(lm, cache_dir=tmp_path)
    engine.generate(rag_messages(QUESTION, DOCS), max_new_tokens=2)
    huge = "word " * 400
    with pytest.raises(ContextTooLongError, match="doc1.*more than the model window of 256"):
        engine.generate(rag_messages(QUESTION, [DOCS[0], huge]), max_new_tokens=2)
    # Nothing lost: the earlier documents are still served from cache.
    again = engine.generate(rag_messages(QUESTION, DOCS), max_new_tokens=2)
    assert {u.source for u in again.segments} == {"memory"}


def test_files_that_cannot_be_read(tmp_path):
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(DocumentError, match="latin1.txt is not valid UTF-8"):
        read_document(binary)
    with pytest.raises(DocumentError, match="cannot read document"):
        read_document(tmp_path / "missing.txt")
    empty = tmp_path / "empty.md"
    empty.write_text("   \n")
    with pytest.raises(EmptyDocumentError, match="empty.md"):
        read_document(empty)
    done = run_cli("ask", "--docs", str(binary), "--question", "q", "--cache-dir", str(tmp_path / "c"))
    assert done.returncode != 0 and "not valid UTF-8" in done.stderr
    done = run_cli("ask", "--docs", str(tmp_path / "nope"), "--question", "q")
    assert done.returncode != 0 and "no such file or folder" in done.stderr


def test_unknown_compressor_placement_and_ratio(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="unknown compressor .zip.; available: beacon, exact, knorm, streaming"):
        Engine(tiny_models["llama"], compressor="zip", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown placement"):
        Engine(tiny_models["llama"], placement="random", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="repair_tokens must be >= 0"):
        Engine(tiny_models["llama"], repair_tokens=-1, cache_dir=tmp_path)
    done = run_cli("ask", "--docs", "README.md", "--question", "q", "--ratio", "4")
    assert done.returncode != 0 and "--ratio, --window, --keep and --tail apply to compressing methods" in done.stderr
    for option, value in (("--keep", "digits"), ("--tail", "64")):
        done = run_cli("ask", "--docs", "README.md", "--question", "q", option, value)
        assert done.returncode != 0 and "--tail apply to compressing methods" in done.stderr
    done = run_cli("ask", "--docs", "README.md", "--question", "q", "--compressor", "beacon", "--tail", "-1")
    assert done.returncode != 0 and "--tail must be a whole number of tokens >= 0, got -1" in done.stderr
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        Engine(tiny_models["llama"], cache_dir=tmp_path).generate("hi", max_new_tokens=0)


def test_unsupported_model_and_missing_path(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported"):
        load_model(tmp_path / "gpt2")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_model(tmp_path / "no-such-model")


def test_corrupt_and_truncated_entries_are_misses(tiny_models, tmp_path, caplog):
    lm = tiny_models["qwen2"]
    messages = rag_messages(QUESTION, DOCS)
    cold = Engine(lm, cache_dir=tmp_path).generate(messages, max_new_tokens=6)
    keys = [u.key for u in cold.segments]
    # Damage the stored bytes of two entries through the files diskcache keeps them in.
    disk = DiskTier(tmp_path)
    for damaged, key in enumerate(keys[:2]):
        value = disk._cache.get(key)
        assert isinstance(value, bytes)
        broken = value[: len(value) // 2] if damaged == 0 else value[:-9] + bytes([value[-9] ^ 0xFF]) + value[-8:]
        disk._cache.set(key, broken)
    disk.close()
    caplog.set_level(logging.WARNING)
    engine = Engine(lm, cache_dir=tmp_path)
    again = engine.generate(messages, max_new_tokens=6)
    assert again.token_ids == cold.token_ids
    assert [u.source for u in again.segments][:2] == ["computed", "computed"]
    assert all(u.source == "disk" for u in again.segments[2:])
    assert engine.compressions == 2
    assert any("corrupt" in r.getMessage().lower() or "checksum" in r.getMessage().lower() for r in caplog.records)
    # Replaced: a third engine reads every entry from disk.
    third = Engine(lm, cache_dir=tmp_path).generate(messages, max_new_tokens=6)
    assert {u.source for u in third.segments} == {"disk"}


def test_entry_of_another_model_is_never_used(embedded, tmp_path):
    a = tiny_model("llama", embedded.tokenizer, seed=1)
    b = tiny_model("llama", embedded.tokenizer, seed=2)
    messages = rag_messages(QUESTION, DOCS)
    from_a = Engine(a, cache_dir=tmp_path).generate(messages, max_new_tokens=6)
    engine_b = Engine(b, cache_dir=tmp_path)
    from_b = engine_b.generate(messages, max_new_tokens=6)
    assert {u.source for u in from_b.segments} == {"computed"}  # different fingerprint, different keys
    assert {u.key for u in from_a.segments}.isdisjoint(u.key for u in from_b.segments)

    # An entry of model A copied onto the key model B asks for is detected and replaced.
    disk = DiskTier(tmp_path)
    disk._cache.set(from_b.segments[0].key, disk._cache.get(from_a.segments[0].key))
    disk.close()
    fresh_b = Engine(b, cache_dir=tmp_path)
    result = fresh_b.generate(messages, max_new_tokens=6)
    assert result.segments[0].source == "computed"
    assert result.token_ids == from_b.token_ids


def test_model_folder_loads_with_fingerprint_of_its_weights(embedded, tmp_path, monkeypatch):
    from beacon_rag.models import weights_digest

    monkeypatch.setenv("BEACON_RAG_HOME", str(tmp_path / "home"))
    tiny = tiny_model("qwen2", embedded.tokenizer, seed=5)
    tiny.model.save_pretrained(tmp_path / "qwen")
    embedded.tokenizer.save_pretrained(tmp_path / "qwen")
    loaded = load_model(tmp_path / "qwen")
    assert loaded.family == "qwen2"
    assert loaded.fingerprint == weights_digest(tiny.model) == tiny.fingerprint
    assert load_model(tmp_path / "qwen") is loaded  # shared, not reloaded
    assert list((tmp_path / "home" / "fingerprints").glob("*.json"))  # remembered for the next start-up
    # Same answer as the in-memory model: the folder round trip changed nothing.
    messages = rag_messages(QUESTION, DOCS)
    a = Engine(loaded, persist=False).generate(messages, max_new_tokens=5)
    b = Engine(tiny, persist=False).generate(messages, max_new_tokens=5)
    assert a.token_ids == b.token_ids
