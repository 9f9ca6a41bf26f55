"""DocumentIndex: the real embedder (embedded all-MiniLM-L6-v2), real FAISS, real files.

One embedder per module (loading it is most of the cost); the reload check runs in a new
interpreter so nothing of this process's state can make it pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from beacon_rag.engine import Engine, rag_messages
from beacon_rag.index import (
    DocumentIndex,
    EmbedderMismatchError,
    IndexLoadError,
    SentenceTransformerEmbedder,
)

DOCS = {
    "lighthouse": "The lighthouse on the northern cliff was built in 1871 and its lamp is visible for twenty miles at sea.",
    "bakery": "The bakery on Mill Street sells sourdough bread, croissants and cinnamon rolls every morning from six.",
    "football": "The town football club won the regional cup after a penalty shootout against their oldest rivals.",
    "volcano": "The volcano erupted in 1902, covering the valley in ash and forcing the villagers to evacuate.",
    "python": "Python lists are mutable sequences; append adds one item at the end and sort orders them in place.",
}
QUERIES = {
    "lighthouse": "How far can ships see the lamp of the lighthouse?",
    "bakery": "Where can I buy fresh bread and pastries?",
    "football": "Which team won the cup final on penalties?",
    "volcano": "When did the eruption cover the valley with ash?",
    "python": "How do I add an element to a list in Python?",
}


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="module")
def index(embedder) -> DocumentIndex:
    idx = DocumentIndex(embedder)
    idx.add(list(DOCS.values()), [{"title": name} for name in DOCS], ids=list(DOCS))
    return idx


def test_search_puts_the_relevant_document_first(index):
    for name, query in QUERIES.items():
        hits = index.search(query, k=3)
        assert hits[0].id == name, (query, [(h.id, h.score) for h in hits])
        assert hits[0].score > hits[1].score
        assert -1.0001 <= hits[-1].score <= hits[0].score <= 1.0001  # cosine of unit vectors
    assert len(index.search(QUERIES["bakery"], k=50)) == len(DOCS)  # k beyond the size: no padding


def test_content_hash_and_duplicates(embedder):
    idx = DocumentIndex(embedder)
    text = DOCS["volcano"]
    first = idx.add([text, DOCS["bakery"], text])
    assert len(idx) == 2 and first[0] == first[2]
    again = idx.add([text], ids=["another-id"])
    assert again == first[:1] and len(idx) == 2
    entry = idx.get(first[0])
    assert entry.content_hash == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert entry.id == entry.content_hash  # the default id is the content hash
    hit = idx.search(QUERIES["volcano"], k=1)[0]
    assert hit.content_hash == entry.content_hash and hit.text == text
    with pytest.raises(ValueError, match="already used"):
        idx.add([DOCS["python"]], ids=[first[1]])
    with pytest.raises(TypeError, match="JSON"):
        idx.add([DOCS["python"]], [{"bad": object()}])
    assert len(idx) == 2  # refused calls change nothing
    assert idx.delete([first[0], "unknown"]) == 1 and len(idx) == 1
    assert [h.id for h in idx.search(QUERIES["volcano"], k=4)] == [first[1]]
    # A deleted text can come back; it gets a fresh FAISS id.
    back = idx.add([text])
    assert back == first[:1] and idx.get(back[0]).faiss_id == 2


_CHILD = textwrap.dedent(
    """
    import json, sys
    from beacon_rag.index import DocumentIndex
    index = DocumentIndex.load(sys.argv[1])
    out = [[(h.id, h.score, h.faiss_id) for h in index.search(q, k=5)] for q in json.loads(sys.argv[2])]
    print(json.dumps({"len": len(index), "results": out}))
    """
)


def test_save_then_load_in_a_new_process_gives_the_same_results(index, tmp_path):
    folder = index.save(tmp_path / "idx")
    # Only FAISS's binary format and JSON on disk: nothing that would need unpickling.
    assert sorted(p.name for p in folder.iterdir()) == ["entries.jsonl", "index.faiss", "index.json"]
    assert not (folder / "index.faiss").read_bytes().startswith(b"\x80")  # not a pickle stream
    manifest = json.loads((folder / "index.json").read_text())
    assert manifest["embedder"]["name"] == "all-MiniLM-L6-v2" and manifest["embedder"]["dimension"] == 384
    for line in (folder / "entries.jsonl").read_text().splitlines():
        json.loads(line)

    queries = list(QUERIES.values())
    here = [[(h.id, h.score, h.faiss_id) for h in index.search(q, k=5)] for q in queries]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(folder), json.dumps(queries)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert there["len"] == len(index)
    for mine, theirs in zip(here, there["results"]):
        assert [(i, f) for i, _, f in mine] == [(i, f) for i, _, f in theirs]
        assert np.allclose([s for _, s, _ in mine], [s for _, s, _ in theirs], atol=1e-6, rtol=0)


class _FakeEmbedder:
    """Not a model: only what ``load`` checks. Vectors are never compared in these tests."""

    def __init__(self, name: str, dimension: int, identity: str) -> None:
        self.name, self.dimension, self.identity = name, dimension, identity

    def embed(self, texts, *, progress=False):
        return np.ones((len(texts), self.dimension), dtype=np.float32)


def test_load_refuses_another_embedder(index, embedder, tmp_path):
    folder = index.save(tmp_path / "idx")
    with pytest.raises(EmbedderMismatchError, match="dimension 384.*dimension 768"):
        DocumentIndex.load(folder, embedder=_FakeEmbedder("all-MiniLM-L6-v2", 768, embedder.identity))
    with pytest.raises(EmbedderMismatchError, match="'other-model'"):
        DocumentIndex.load(folder, embedder=_FakeEmbedder("other-model", 384, embedder.identity))
    with pytest.raises(EmbedderMismatchError, match="different weights"):
        DocumentIndex.load(folder, embedder=_FakeEmbedder("all-MiniLM-L6-v2", 384, "0" * 64))
    assert len(DocumentIndex.load(folder, embedder=embedder)) == len(index)


def test_damaged_files_are_named(index, embedder, tmp_path):
    folder = index.save(tmp_path / "idx")
    faiss_file = folder / "index.faiss"
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexLoadError, match=r"index\.faiss is damaged or truncated"):
        DocumentIndex.load(folder, embedder=embedder)

    # Without the checksum to catch it, FAISS's own reader still fails with our message.
    manifest = json.loads((folder / "index.json").read_text())
    manifest["files"]["index.faiss"]["sha256"] = hashlib.sha256(faiss_file.read_bytes()).hexdigest()
    (folder / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match=r"index\.faiss is not a readable FAISS index"):
        DocumentIndex.load(folder, embedder=embedder)

    folder = index.save(tmp_path / "idx2")
    entries = folder / "entries.jsonl"
    entries.write_text(entries.read_text()[:-40])
    with pytest.raises(IndexLoadError, match=r"entries\.jsonl is damaged or truncated"):
        DocumentIndex.load(folder, embedder=embedder)
    (folder / "index.json").write_text("{not json")
    with pytest.raises(IndexLoadError, match=r"index\.json is damaged"):
        DocumentIndex.load(folder, embedder=embedder)


def test_precompute_records_the_keys_a_later_request_hits(index, tiny_models, single_thread, tmp_path):
    engine = Engine(tiny_models["llama"], cache_dir=tmp_path / "kv", placement="independent")
    counts = index.precompute(engine, progress=False)
    assert counts == {"documents": len(DOCS), "computed": len(DOCS), "cached": 0, "failed": 0}
    assert index.precompute(engine, progress=False)["cached"] == len(DOCS)  # idempotent

    question = QUERIES["lighthouse"]
    hits = index.search(question, k=2)
    assert all(len(h.cache_keys) == 1 for h in hits)
    prepared = engine.prepare(rag_messages(question, [h.text for h in hits], titles=[h.title for h in hits]))
    documents = [u for u in prepared.uses if u.kind == "document"]
    assert [u.key for u in documents] == [h.cache_keys[0] for h in hits]
    assert all(u.source in ("memory", "disk") for u in documents)

    # Keys survive a save/load (JSON), and a fresh engine on the same cache folder reads the disk tier.
    loaded = DocumentIndex.load(index.save(tmp_path / "idx"), embedder=index.embedder)
    first = loaded.search(question, k=1)[0]
    again = Engine(tiny_models["llama"], cache_dir=tmp_path / "kv", placement="independent")
    result = again.generate(rag_messages(question, [first.text], titles=[first.title]), max_new_tokens=2)
    (use,) = [u for u in result.segments if u.kind == "document"]
    assert use.key == first.cache_keys[0] and use.source == "disk"


def test_precompute_counts_failures_without_stopping(embedder, tiny_models, single_thread, tmp_path):
    idx = DocumentIndex(embedder)
    idx.add([DOCS["bakery"], "word " * 5000, DOCS["volcano"]])  # the middle one exceeds the window
    engine = Engine(tiny_models["qwen2"], cache_dir=tmp_path / "kv")
    counts = idx.precompute(engine, progress=False)
    assert counts == {"documents": 3, "computed": 2, "cached": 0, "failed": 1}
    assert [bool(e.cache_keys) for e in idx.entries()] == [True, False, True]
