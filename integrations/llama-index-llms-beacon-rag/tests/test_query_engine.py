"""End to end: a real ``VectorStoreIndex`` (bundled MiniLM embeddings) and query engine on the
embedded model, with ``BeaconSynthesizer`` so that each retrieved node is one cached segment.

Also the FAISS path: ``DocumentIndexRetriever`` over a ``DocumentIndex`` whose documents were
precomputed by the core, so the very first LlamaIndex query reads every node from the cache.
"""

from __future__ import annotations

from typing import Any

import pytest
from beacon_rag.documents import read_documents, sample_documents_dir
from beacon_rag.index import DocumentIndex, content_hash
from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.query_engine import RetrieverQueryEngine

from llama_index.llms.beacon_rag import BeaconEmbedding, BeaconSynthesizer, DocumentIndexRetriever
from llama_index.llms.beacon_rag.retrievers import shared_embedder

LIGHTHOUSE = "How tall is the lighthouse?"
FERRY = "When does the ferry leave?"


@pytest.fixture(scope="module")
def vector_index() -> VectorStoreIndex:
    documents = SimpleDirectoryReader(str(sample_documents_dir())).load_data()
    return VectorStoreIndex.from_documents(documents, embed_model=BeaconEmbedding())


def details(response: Any) -> dict[str, Any]:
    return response.metadata["beacon_rag"]


def node_segments(response: Any) -> dict[str, dict[str, Any]]:
    return {s["label"]: s for s in details(response)["segments"] if s["kind"] == "document"}


def node_ids(response: Any) -> list[str]:
    return [n.node.node_id for n in response.source_nodes]


def test_second_identical_query_reads_every_node_from_cache(vector_index: VectorStoreIndex, make_llm: Any) -> None:
    llm = make_llm(max_tokens=16)  # chained placement: exact, same answer as a plain prefill
    engine = vector_index.as_query_engine(llm=llm, response_synthesizer=BeaconSynthesizer(llm=llm),
                                          similarity_top_k=3)
    cold = engine.query(LIGHTHOUSE)
    warm = engine.query(LIGHTHOUSE)
    assert node_ids(cold) == node_ids(warm) and len(node_ids(warm)) == 3
    segments = node_segments(warm)
    assert list(segments) == node_ids(warm)  # one segment per retrieved node, labelled by node id
    assert all(s["source"] == "computed" for s in node_segments(cold).values())
    assert all(s["source"] == "memory" for s in segments.values())
    assert details(warm)["usage"]["cache_read_input_tokens"] >= sum(s["raw_tokens"] for s in segments.values())
    assert details(warm)["usage"]["cache_creation_input_tokens"] == 0
    assert str(warm) == str(cold) and str(cold).strip()  # greedy: a cache hit never changes the answer


def test_a_different_subset_compresses_only_the_new_nodes(vector_index: VectorStoreIndex, make_llm: Any) -> None:
    llm = make_llm(max_tokens=4, placement="independent")  # nodes reusable in any order and combination
    engine = vector_index.as_query_engine(llm=llm, response_synthesizer=BeaconSynthesizer(llm=llm),
                                          similarity_top_k=2)
    first = engine.query(LIGHTHOUSE)
    second = engine.query(FERRY)
    seen, now = set(node_ids(first)), node_ids(second)
    new = [n for n in now if n not in seen]
    assert new and len(new) < len(now), "precondition: the two queries must retrieve overlapping, different sets"
    segments = node_segments(second)
    for node_id in now:
        assert segments[node_id]["source"] == ("computed" if node_id in new else "memory"), node_id
    assert details(second)["usage"]["cache_creation_input_tokens"] == sum(segments[n]["raw_tokens"] for n in new)


def test_streaming_and_async_queries(vector_index: VectorStoreIndex, make_llm: Any) -> None:
    llm = make_llm(max_tokens=12)
    plain = vector_index.as_query_engine(llm=llm, response_synthesizer=BeaconSynthesizer(llm=llm),
                                         similarity_top_k=2).query(LIGHTHOUSE)
    streaming = vector_index.as_query_engine(
        llm=llm, streaming=True, response_synthesizer=BeaconSynthesizer(llm=llm, streaming=True), similarity_top_k=2)
    response = streaming.query(LIGHTHOUSE)
    assert "".join(response.response_gen) == str(plain)
    assert details(response)["usage"]["cache_creation_input_tokens"] == 0  # filled when the stream ended
    assert all(s["source"] == "memory" for s in details(response)["segments"])


async def test_async_query_hits_the_cache(vector_index: VectorStoreIndex, make_llm: Any) -> None:
    llm = make_llm(max_tokens=12)
    engine = vector_index.as_query_engine(llm=llm, response_synthesizer=BeaconSynthesizer(llm=llm),
                                          similarity_top_k=2)
    cold = await engine.aquery(LIGHTHOUSE)
    warm = await engine.aquery(LIGHTHOUSE)
    assert str(warm) == str(cold)
    assert details(warm)["usage"]["cache_creation_input_tokens"] == 0
    assert details(warm)["usage"]["cache_read_input_tokens"] > 0


def test_document_index_retriever_nodes_carry_the_content_hash_and_hit_precomputed_caches(make_llm: Any) -> None:
    llm = make_llm(max_tokens=12, placement="independent")
    index = DocumentIndex(shared_embedder())
    index.add_documents(read_documents([sample_documents_dir()]))
    counts = index.precompute(llm.engine, progress=False)  # the core warms every document's KV
    assert counts["computed"] == len(index) and counts["failed"] == 0

    retriever = DocumentIndexRetriever(index, similarity_top_k=2)
    nodes = retriever.retrieve(FERRY)
    assert len(nodes) == 2
    for item in nodes:
        entry = index.get(item.node.node_id)
        assert item.node.metadata["content_hash"] == content_hash(item.node.get_content()) == entry.content_hash
        assert item.node.metadata["cache_keys"] == entry.cache_keys and entry.cache_keys

    engine = RetrieverQueryEngine.from_args(retriever, llm=llm, response_synthesizer=BeaconSynthesizer(llm=llm))
    response = engine.query(FERRY)  # the first LlamaIndex query: every node is already cached
    segments = node_segments(response)
    assert list(segments) == [n.node.node_id for n in nodes]
    assert all(s["source"] == "memory" for s in segments.values())
    # The engine's segment keys are the ones precompute recorded on the index entries.
    recorded = {key[:16] for item in nodes for key in item.node.metadata["cache_keys"]}
    assert {s["key"] for s in segments.values()} <= recorded


def test_retriever_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="similarity_top_k"):
        DocumentIndexRetriever(object(), similarity_top_k=0)
    with pytest.raises(TypeError, match="DocumentIndex"):
        DocumentIndexRetriever(object())
