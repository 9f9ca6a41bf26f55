"""KV reuse through ordinary LangChain chains, on the embedded model (offline).

Each test builds its models over its own ``cache_dir`` (``tmp_path``): engines are shared per
configuration, so a fresh folder means a fresh engine with an empty RAM tier and a cold first call.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableParallel, RunnablePassthrough

from langchain_beacon_rag import BeaconRAG, ChatBeaconRAG, documents_to_messages

DOCS = {
    "ferry": "The harbour ferry leaves the north pier every hour from six in the morning until ten at night.",
    "market": "The fish market opens at five in the morning; the auction bell rings twice before the first lot.",
    "lighthouse": "The lighthouse keeper, Ada Morrow, lights the lamp at dusk and logs every passing ship.",
    "museum": "The maritime museum keeps the old ferry bell and is closed on Mondays for cleaning.",
}
QUESTION = "When does the ferry leave?"


class FixedRetriever(BaseRetriever):
    """Returns the named documents in the given order (stands in for a vector store)."""

    names: list[str]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [Document(DOCS[n], id=n, metadata={"source": n}) for n in self.names]


def usage(message: BaseMessage) -> dict[str, int]:
    meta = message.usage_metadata
    assert meta is not None
    return {"input": meta["input_tokens"], "read": meta["input_token_details"]["cache_read"],
            "created": meta["input_token_details"]["cache_creation"]}


def segments(message: BaseMessage) -> list[dict[str, Any]]:
    return message.response_metadata["beacon_rag"]["segments"]


def rag_chain(llm: ChatBeaconRAG, names: list[str]) -> Any:
    """The native path: one ``text-plain`` block per document through a MessagesPlaceholder."""
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer the question using the documents."),
        MessagesPlaceholder("documents"),
        ("human", "Question: {question}"),
    ])
    return RunnableParallel(documents=FixedRetriever(names=names) | documents_to_messages(),
                            question=RunnablePassthrough()) | prompt | llm


def test_repeated_rag_question_reads_every_document_from_cache(tmp_path: Any) -> None:
    llm = ChatBeaconRAG(max_tokens=16, cache_dir=str(tmp_path))
    chain = rag_chain(llm, ["ferry", "market", "lighthouse"])
    cold = chain.invoke(QUESTION)
    warm = chain.invoke(QUESTION)
    documents = [s for s in segments(warm) if s["kind"] == "document"]
    assert [s["label"] for s in documents] == ["ferry", "market", "lighthouse"]
    assert usage(cold)["created"] >= sum(s["raw_tokens"] for s in documents) > 0
    assert usage(warm)["created"] == 0
    assert usage(warm)["read"] >= sum(s["raw_tokens"] for s in documents)
    assert all(s["source"] == "memory" for s in segments(warm))
    assert warm.content == cold.content  # greedy: a cache hit never changes the answer


def test_independent_placement_reuses_documents_in_any_order(tmp_path: Any) -> None:
    """placement="independent": each document is cached after the shared prefix only, so a
    reordered retrieval compresses nothing and one new document compresses only itself."""
    llm = ChatBeaconRAG(max_tokens=4, placement="independent", cache_dir=str(tmp_path))
    first = rag_chain(llm, ["ferry", "market", "lighthouse"]).invoke(QUESTION)
    assert usage(first)["created"] > 0
    reordered = rag_chain(llm, ["lighthouse", "ferry", "market"]).invoke(QUESTION)
    assert usage(reordered)["created"] == 0
    assert [s["label"] for s in segments(reordered) if s["kind"] == "document"] == ["lighthouse", "ferry", "market"]
    with_new = rag_chain(llm, ["market", "museum", "ferry"]).invoke(QUESTION)
    computed = [s for s in segments(with_new) if s["source"] == "computed"]
    assert [s["label"] for s in computed] == ["museum"]
    assert usage(with_new)["created"] == computed[0]["raw_tokens"]


def _format_docs(docs: list[Document]) -> str:
    return "\n\n".join(d.page_content for d in docs)


STUFF_PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using the context."),
    ("human", "Context:\n{context}\n\nQuestion: {question}"),
])


@pytest.mark.parametrize("how", ["registrar", "callback", "register_documents"])
def test_unmodified_string_chain_still_caches_each_document(tmp_path: Any, how: str) -> None:
    """The fallback: documents joined by format_docs are found verbatim and cut back out."""
    llm = ChatBeaconRAG(max_tokens=4, cache_dir=str(tmp_path))
    retriever = FixedRetriever(names=["ferry", "market"])
    config: dict[str, Any] = {}
    if how == "registrar":
        context = retriever | llm.document_registrar() | _format_docs
    else:
        context = retriever | _format_docs
    if how == "callback":
        config = {"callbacks": [llm.document_callback()]}
    if how == "register_documents":
        llm.register_documents(retriever.invoke(QUESTION))
    chain = {"context": context, "question": RunnablePassthrough()} | STUFF_PROMPT | llm
    chain.invoke(QUESTION, config=config)
    warm = chain.invoke(QUESTION, config=config)
    documents = [s for s in segments(warm) if s["kind"] == "document"]
    assert len(documents) == 2
    assert usage(warm)["created"] == 0
    assert usage(warm)["read"] >= sum(s["raw_tokens"] for s in documents)


TURNS = ["Hi, my name is Sam.", "I live by the harbour.", "I like boats.", "What is my name?"]


def assert_history_reused(turns: list[dict[str, int]]) -> None:
    """Per-turn usage of a growing conversation: the history grows every turn, but what is
    prefilled is only the newest exchange (the previous answer and the new question, each capped
    in length), so it does not grow with it; and nothing cached by one turn is computed again
    by the next (its reads are exactly everything the previous turn read or created)."""
    inputs = [t["input"] for t in turns]
    prefills = [t["input"] - t["read"] for t in turns]
    assert inputs == sorted(inputs) and inputs[-1] > inputs[1] + 30, inputs
    assert max(prefills[1:]) <= min(prefills[1:]) + 24, prefills
    assert prefills[-1] < inputs[-1] / 2, (prefills, inputs)
    for before, now in itertools.pairwise(turns):
        assert now["read"] == before["read"] + before["created"], turns


def test_chat_loop_prefill_stays_flat_as_history_grows(tmp_path: Any) -> None:
    llm = ChatBeaconRAG(max_tokens=12, cache_dir=str(tmp_path))
    history: list[BaseMessage] = [SystemMessage("You are a friendly harbour guide. Answer briefly.")]
    turns = []
    for turn in TURNS:
        history.append(HumanMessage(turn))
        answer = llm.invoke(history)
        history.append(answer)
        turns.append(usage(answer))
    assert_history_reused(turns)


@pytest.mark.filterwarnings("ignore::langchain_core._api.deprecation.LangChainDeprecationWarning")
def test_runnable_with_message_history_reuses_the_prefix(tmp_path: Any) -> None:
    from langchain_core.chat_history import InMemoryChatMessageHistory
    from langchain_core.runnables.history import RunnableWithMessageHistory

    llm = ChatBeaconRAG(max_tokens=12, cache_dir=str(tmp_path))
    prompt = ChatPromptTemplate.from_messages([
        ("system", "You are a friendly harbour guide. Answer briefly."),
        MessagesPlaceholder("history"),
        ("human", "{input}"),
    ])
    store: dict[str, InMemoryChatMessageHistory] = {}
    chat = RunnableWithMessageHistory(prompt | llm, lambda sid: store.setdefault(sid, InMemoryChatMessageHistory()),
                                      input_messages_key="input", history_messages_key="history")
    turns = []
    for turn in TURNS:
        answer = chat.invoke({"input": turn}, config={"configurable": {"session_id": "s"}})
        turns.append(usage(answer))
    assert_history_reused(turns)


def test_langgraph_checkpointed_chat_reuses_the_prefix(tmp_path: Any) -> None:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, MessagesState, StateGraph

    llm = ChatBeaconRAG(max_tokens=12, cache_dir=str(tmp_path))

    def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [llm.invoke([SystemMessage("You are a friendly harbour guide. Answer briefly."),
                                         *state["messages"]])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_edge(START, "model")
    graph = builder.compile(checkpointer=InMemorySaver())
    turns = []
    for turn in TURNS:
        state = graph.invoke({"messages": [HumanMessage(turn)]}, config={"configurable": {"thread_id": "t"}})
        answer = state["messages"][-1]
        turns.append(usage(answer))
    assert_history_reused(turns)


@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
def test_langgraph_prebuilt_agent_with_memory_reuses_the_prefix(tmp_path: Any) -> None:
    """LangGraph's prebuilt agent (``create_react_agent``) with a checkpointer. Run without tools:
    SmolLM2-135M has no tool calling, so the graph is agent -> end; what this shows is that the
    agent's own message handling (prompt + checkpointed thread) keeps the prefix cacheable."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.prebuilt import create_react_agent

    llm = ChatBeaconRAG(max_tokens=12, cache_dir=str(tmp_path))
    agent = create_react_agent(llm, tools=[], prompt="You are a friendly harbour guide. Answer briefly.",
                               checkpointer=InMemorySaver())
    turns = []
    for turn in TURNS:
        state = agent.invoke({"messages": [HumanMessage(turn)]}, config={"configurable": {"thread_id": "t"}})
        turns.append(usage(state["messages"][-1]))
    assert len(state["messages"]) == 2 * len(TURNS)  # the checkpointer kept the thread
    assert_history_reused(turns)


class TokenCounter(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ends = 0

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.ends += 1


def test_stream_fires_each_token_once_and_matches_invoke(tmp_path: Any) -> None:
    llm = ChatBeaconRAG(max_tokens=10, cache_dir=str(tmp_path))
    counter = TokenCounter()
    chunks = list(llm.stream("Name a colour.", config={"callbacks": [counter]}))
    assert len(chunks) > 2 and chunks[-1].chunk_position == "last"
    assert "".join(counter.tokens) == "".join(c.content for c in chunks)
    assert [c for c in chunks if c.usage_metadata and c.usage_metadata["input_tokens"]] == [chunks[-1]]
    assert counter.ends == 1
    assert llm.invoke("Name a colour.").content == "".join(c.content for c in chunks)


async def test_async_stream_callbacks_and_concurrency(tmp_path: Any) -> None:
    llm = ChatBeaconRAG(max_tokens=10, cache_dir=str(tmp_path))
    counter = TokenCounter()
    chunks = [c async for c in llm.astream("Name a colour.", config={"callbacks": [counter]})]
    text = "".join(c.content for c in chunks)
    assert len(chunks) > 2 and text and "".join(counter.tokens) == text
    answers = await llm.abatch(["Name a colour.", "Name a colour."])
    assert [a.content for a in answers] == [text, text]
    # an early stop leaves the model usable (the worker sees the flag and stops)
    async for _ in llm.astream("Count to twenty."):
        break
    assert (await llm.ainvoke("Name a colour.")).content == text


def test_stop_sequences_and_sampling_params(tmp_path: Any) -> None:
    llm = ChatBeaconRAG(max_tokens=16, cache_dir=str(tmp_path))
    full = llm.invoke("Hello").content
    assert "assist" in full
    cut = llm.invoke("Hello", stop=["assist"]).content
    assert "assist" not in cut and full.startswith(cut)
    a = llm.invoke("Tell me a word.", temperature=1.0, seed=7, top_p=0.9).content
    b = llm.invoke("Tell me a word.", temperature=1.0, seed=7, top_p=0.9).content
    assert a == b  # seeded sampling is reproducible
    assert llm.get_token_ids("hello world") == llm.engine.lm.encode("hello world")


def test_text_completion_llm_streams_with_callbacks_and_caches_registered_docs(tmp_path: Any) -> None:
    llm = BeaconRAG(max_tokens=6, cache_dir=str(tmp_path))
    counter = TokenCounter()
    chunks = list(llm.stream("Hello", config={"callbacks": [counter]}))
    assert "".join(chunks) == "".join(counter.tokens) and "".join(chunks)
    assert llm.invoke("Hello") == "".join(chunks)
    llm.register_documents([DOCS["ferry"]])
    prompt = f"Context:\n{DOCS['ferry']}\n\nQuestion: {QUESTION}"
    llm.invoke(prompt)
    result = llm.generate([prompt])
    info = result.generations[0][0].generation_info
    assert info["usage_metadata"]["input_token_details"]["cache_creation"] == 0
    assert [s["label"] for s in info["beacon_rag"]["segments"] if s["kind"] == "document"] == [None]
