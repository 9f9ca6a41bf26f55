"""``BeaconRAGRetriever`` over a real FAISS ``DocumentIndex`` (offline MiniLM embedder) feeding
``ChatBeaconRAG`` (embedded SmolLM2) through an ordinary LCEL chain.

Each test uses its own ``cache_dir`` (``tmp_path``), so its engine starts with an empty cache.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import pytest
from beacon_rag.index import DocumentIndex, SentenceTransformerEmbedder, content_hash
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableParallel, RunnablePassthrough

from langchain_beacon_rag import BeaconRAGRetriever, ChatBeaconRAG, documents_to_message, documents_to_messages
from langchain_beacon_rag.retrievers import DEFAULT_SYSTEM

DOCS = {
    "ferry": "The harbour ferry leaves the north pier every hour from six in the morning until ten at night.",
    "market": "The fish market opens at five in the morning; the auction bell rings twice before the first lot.",
    "lighthouse": "The lighthouse keeper, Ada Morrow, lights the lamp at dusk and logs every passing ship.",
    "museum": "The maritime museum keeps the old ferry bell and is closed on Mondays for cleaning.",
    "tickets": "Ferry tickets are sold on board and cost two crowns for adults and one crown for children.",
    "bakery": "The bakery on Quay Street sells rye bread and cinnamon buns from seven until noon.",
}
QUESTION = "When does the ferry leave?"
PROMPT = ChatPromptTemplate.from_messages([
    ("system", DEFAULT_SYSTEM),  # the prompt precompute warms documents after
    MessagesPlaceholder("documents"),
    ("human", "Question: {question}"),
])


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


@pytest.fixture
def retriever(embedder: SentenceTransformerEmbedder) -> BeaconRAGRetriever:
    # A fresh index per test: precompute records cache keys into its entries.
    return BeaconRAGRetriever.from_documents(
        [Document(text, id=name, metadata={"title": name.capitalize()}) for name, text in DOCS.items()],
        embedder=embedder, k=3)


def chain(retriever: BeaconRAGRetriever, llm: ChatBeaconRAG) -> Any:
    return RunnableParallel(documents=retriever | documents_to_messages(),
                            question=RunnablePassthrough()) | PROMPT | llm


def usage(message: BaseMessage) -> dict[str, int]:
    meta = message.usage_metadata
    assert meta is not None
    return {"input": meta["input_tokens"], "read": meta["input_token_details"]["cache_read"],
            "created": meta["input_token_details"]["cache_creation"]}


def documents(message: BaseMessage) -> list[dict[str, Any]]:
    return [s for s in message.response_metadata["beacon_rag"]["segments"] if s["kind"] == "document"]


def ids(retriever: BeaconRAGRetriever, query: str) -> list[str]:
    return [d.id for d in retriever.invoke(query)]


def test_documents_carry_content_hash_and_cache_keys(retriever: BeaconRAGRetriever, tmp_path: Any) -> None:
    docs = retriever.invoke(QUESTION)
    assert docs[0].id == "ferry" and len(docs) == 3
    for doc in docs:
        assert doc.metadata["content_hash"] == content_hash(doc.page_content)
        assert doc.metadata["cache_keys"] == [] and doc.metadata["cache_title"] == doc.id.capitalize()
        assert -1.0 <= doc.metadata["score"] <= 1.0
    assert docs[0].metadata["score"] >= docs[1].metadata["score"] >= docs[2].metadata["score"]

    llm = ChatBeaconRAG(placement="independent", cache_dir=str(tmp_path / "kv"))
    counts = retriever.precompute(llm)
    assert counts == {"documents": len(DOCS), "computed": len(DOCS), "cached": 0, "failed": 0}
    keyed = retriever.invoke(QUESTION)
    assert all(len(d.metadata["cache_keys"]) == 1 for d in keyed)
    assert len({d.metadata["cache_keys"][0] for d in retriever.invoke("bread")}) == 3  # one key per text

    # the keys survive a save/load of the index (JSON + FAISS, nothing pickled)
    retriever.index.save(tmp_path / "index")
    reloaded = BeaconRAGRetriever.load(tmp_path / "index", embedder=retriever.index.embedder, k=3)
    assert [d.metadata for d in reloaded.invoke(QUESTION)] == [d.metadata for d in keyed]


def test_bad_input_is_refused_by_name(retriever: BeaconRAGRetriever) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        retriever.invoke("  ")
    with pytest.raises(ValueError, match=r"\['content_hash'\]"):
        retriever.add_documents([Document("A text long enough to index.", metadata={"content_hash": "x"})])
    with pytest.raises(ValueError, match="every document an id"):
        retriever.add_documents([Document("First new text.", id="a"), Document("Second new text.")])
    with pytest.raises(TypeError, match="ChatBeaconRAG"):
        retriever.precompute(object())
    with pytest.raises(ValueError):
        BeaconRAGRetriever(index=retriever.index, k=0)


def test_repeated_question_through_lcel_chain_reads_every_document(retriever: BeaconRAGRetriever,
                                                                    tmp_path: Any) -> None:
    llm = ChatBeaconRAG(max_tokens=16, cache_dir=str(tmp_path))  # chained (default): exact
    rag = chain(retriever, llm)
    cold = rag.invoke(QUESTION)
    warm = rag.invoke(QUESTION)
    retrieved = retriever.invoke(QUESTION)
    docs = documents(warm)
    assert [s["label"] for s in docs] == [d.id for d in retrieved]
    assert [s["content_hash"] for s in docs] == [d.metadata["content_hash"] for d in retrieved]
    assert usage(cold)["created"] >= sum(s["raw_tokens"] for s in docs) > 0
    assert usage(warm)["created"] == 0
    assert usage(warm)["read"] >= sum(s["raw_tokens"] for s in docs)
    assert all(s["source"] == "memory" for s in docs)
    assert warm.content == cold.content and warm.content  # greedy: a cache hit never changes the answer


def test_precomputed_index_makes_the_first_question_a_cache_hit(retriever: BeaconRAGRetriever,
                                                                tmp_path: Any) -> None:
    """After precompute, the documents a chain retrieves land exactly on the KV the index recorded."""
    llm = ChatBeaconRAG(max_tokens=8, placement="independent", cache_dir=str(tmp_path))
    retriever.precompute(llm)
    first = chain(retriever, llm).invoke(QUESTION)
    docs = documents(first)
    assert len(docs) == 3
    assert all(s["indexed_key"] and s["source"] == "memory" for s in docs), docs
    assert usage(first)["created"] == 0
    assert usage(first)["read"] >= sum(s["raw_tokens"] for s in docs)


def test_reordered_or_new_retrieval_compresses_only_new_documents(retriever: BeaconRAGRetriever,
                                                                  tmp_path: Any) -> None:
    """placement="independent": a retrieval in another order compresses nothing; one with a new
    document compresses only that one."""
    q_first, q_reordered, q_new = QUESTION, "How much does a ferry ticket cost?", "What is in the maritime museum?"
    first_ids, reordered_ids, new_ids = ids(retriever, q_first), ids(retriever, q_reordered), ids(retriever, q_new)
    # preconditions on what FAISS returns, so the assertions below test what they claim
    assert set(reordered_ids) == set(first_ids) and reordered_ids != first_ids
    unseen = [i for i in new_ids if i not in first_ids]
    assert len(unseen) == 1

    llm = ChatBeaconRAG(max_tokens=4, placement="independent", cache_dir=str(tmp_path))
    rag = chain(retriever, llm)
    assert usage(rag.invoke(q_first))["created"] > 0
    reordered = rag.invoke(q_reordered)
    assert [s["label"] for s in documents(reordered)] == reordered_ids
    assert usage(reordered)["created"] == 0
    with_new = rag.invoke(q_new)
    computed = [s for s in with_new.response_metadata["beacon_rag"]["segments"] if s["source"] == "computed"]
    assert [s["label"] for s in computed] == unseen
    assert usage(with_new)["created"] == computed[0]["raw_tokens"]


def test_edited_document_is_cached_by_its_text_and_flagged(retriever: BeaconRAGRetriever, tmp_path: Any) -> None:
    """A document changed after retrieval keeps its metadata but not its identity: warned, and its
    segment is not reported as the index's."""
    llm = ChatBeaconRAG(max_tokens=4, placement="independent", cache_dir=str(tmp_path))
    retriever.precompute(llm)
    doc = retriever.invoke(QUESTION)[0]
    edited = Document(doc.page_content.upper(), id=doc.id, metadata=doc.metadata)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answer = llm.invoke([documents_to_message([edited], QUESTION)])
    assert any("does not match the content_hash" in str(w.message) for w in caught)
    (segment,) = documents(answer)
    assert "indexed_key" not in segment and segment["source"] == "computed"


def test_index_built_by_the_core_is_usable_as_is(embedder: SentenceTransformerEmbedder) -> None:
    """A DocumentIndex made with the core API (add_documents of beacon_rag Documents) needs no
    conversion: the retriever wraps it."""
    from beacon_rag.documents import read_documents, sample_documents_dir

    index = DocumentIndex(embedder)
    index.add_documents(read_documents([sample_documents_dir()]))
    docs = BeaconRAGRetriever(index=index, k=2).invoke("When does the ferry sail?")
    assert len(docs) == 2 and all(d.metadata["cache_title"] == d.metadata["title"] for d in docs)


AGENT_TURNS = ["Hi, my name is Sam.", "When does the ferry leave?", "How much is a ferry ticket?",
               "Who keeps the lighthouse?", "What is my name?"]


def test_langgraph_retrieval_agent_with_memory_never_recomputes_history(retriever: BeaconRAGRetriever,
                                                                          tmp_path: Any) -> None:
    """A LangGraph graph with a checkpointer: a retrieval step that attaches documents to the
    user's turn only when the index has a relevant one (score threshold), then the chat model.

    Not a tool-calling agent: SmolLM2-135M has no tool calling, so the decision to retrieve is a
    similarity threshold, not the model's. The retrieved documents stay in the thread's history
    (the user message is replaced in place, by id), so later turns see exactly the same tokens
    and read the whole history, documents included, from the cache.
    """
    from langchain_core.messages import HumanMessage, SystemMessage
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, MessagesState, StateGraph

    retriever = retriever.model_copy(update={"k": 2, "score_threshold": 0.4})
    llm = ChatBeaconRAG(max_tokens=16, cache_dir=str(tmp_path))
    system = SystemMessage("You are a friendly harbour guide. Answer briefly.")

    def retrieve(state: MessagesState) -> dict[str, Any]:
        question = state["messages"][-1]
        docs = retriever.invoke(question.text)
        if not docs:
            return {}
        return {"messages": [HumanMessage(documents_to_message(docs, question.text).content, id=question.id)]}

    def model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [llm.invoke([system, *state["messages"]])]}

    builder = StateGraph(MessagesState)
    builder.add_node("retrieve", retrieve)
    builder.add_node("model", model)
    builder.add_edge(START, "retrieve")
    builder.add_edge("retrieve", "model")
    builder.add_edge("model", END)
    graph = builder.compile(checkpointer=InMemorySaver())

    turns, retrieved = [], []
    for turn in AGENT_TURNS:
        state = graph.invoke({"messages": [HumanMessage(turn)]}, config={"configurable": {"thread_id": "sam"}})
        answer = state["messages"][-1]
        turns.append(usage(answer))
        retrieved.append(sum(s["raw_tokens"] for s in documents(answer) if s["source"] == "computed"))
    # the router really routed: greetings and "what is my name" retrieve nothing, the others do
    assert [n > 0 for n in retrieved] == [False, True, True, True, False], retrieved
    assert len(state["messages"]) == 2 * len(AGENT_TURNS)
    inputs = [t["input"] for t in turns]
    assert inputs == sorted(inputs) and inputs[-1] > 2 * inputs[1], inputs
    for before, now in itertools.pairwise(turns):
        assert now["read"] == before["read"] + before["created"], turns  # nothing is computed twice
    # what is prefilled besides this turn's new documents (previous answer + question) stays flat
    rest = [t["input"] - t["read"] - new for t, new in zip(turns, retrieved)]
    assert max(rest[1:]) <= min(rest[1:]) + 24, (rest, turns)
    assert turns[-1]["input"] - turns[-1]["read"] < turns[-1]["input"] / 4, turns
