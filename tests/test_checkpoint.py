"""``LeanRedisSaver`` writes the stock ``langgraph-checkpoint-redis`` documents."""

from __future__ import annotations

import uuid

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.graph import START, StateGraph

from agents.redis_saver import LeanRedisSaver
from agents.state import AgentState


def chat_graph(checkpointer):
    async def answer(state: AgentState):
        return {"messages": [AIMessage(f"answer {len(state['messages'])}", name="researcher")],
                "steps": state["steps"] + 1, "context": {"seen": len(state["messages"])}}

    graph = StateGraph(AgentState)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    return graph.compile(checkpointer=checkpointer)


async def two_turns(saver, thread_id: str) -> None:
    graph = chat_graph(saver)
    config = {"configurable": {"thread_id": thread_id}}
    for text in ("hello", "and again"):
        await graph.ainvoke({"messages": [HumanMessage(text, id=text)], "steps": 0}, config)


def counter(version: str) -> str:
    return version.split(".")[0]  # versions end in a random fraction


def comparable(document: dict) -> dict:
    """A stored checkpoint minus what differs between two runs (ids, times, randomness)."""
    checkpoint = {k: v for k, v in document["checkpoint"].items() if k not in ("id", "ts")}
    checkpoint["channel_versions"] = {k: counter(v) for k, v in
                                      checkpoint["channel_versions"].items()}
    checkpoint["versions_seen"] = {node: {k: counter(v) for k, v in seen.items()}
                                   for node, seen in checkpoint["versions_seen"].items()}
    for message in checkpoint["channel_values"].get("messages", []):
        if message["kwargs"].get("type") == "ai":
            message["kwargs"].pop("id", None)
    # not ``has_writes``: LangGraph saves a step's writes and its checkpoint concurrently, so
    # either saver's flag depends on which write lands first
    keep = ("checkpoint_ns", "source", "step")
    return {"checkpoint": checkpoint, **{k: document.get(k) for k in keep},
            "has_parent": bool(document["parent_checkpoint_id"])}


async def test_lean_writes_are_the_stock_documents_and_the_stock_saver_reads_them(redis_client):
    lean, stock = LeanRedisSaver(redis_client=redis_client), AsyncRedisSaver(
        redis_client=redis_client)
    await lean.asetup()
    await stock.asetup()
    threads = {"lean": f"lean-{uuid.uuid4().hex[:8]}", "stock": f"stock-{uuid.uuid4().hex[:8]}"}
    await two_turns(lean, threads["lean"])
    await two_turns(stock, threads["stock"])

    documents = {}
    for name, thread_id in threads.items():
        tuples = [t async for t in stock.alist({"configurable": {"thread_id": thread_id}})]
        keys = [stock._make_redis_checkpoint_key(thread_id, "", t.config["configurable"]
                                                 ["checkpoint_id"]) for t in tuples]
        documents[name] = [comparable(await redis_client.json().get(k)) for k in keys]
    assert len(documents["lean"]) == len(documents["stock"]) >= 4
    assert documents["lean"] == documents["stock"]

    # the stock saver resumes the lean saver's thread where it stood
    latest = await stock.aget_tuple({"configurable": {"thread_id": threads["lean"]}})
    messages = latest.checkpoint["channel_values"]["messages"]
    assert [m.text for m in messages] == ["hello", "answer 1", "and again", "answer 3"]
    state = await chat_graph(stock).aget_state({"configurable": {"thread_id": threads["lean"]}})
    assert state.values["steps"] == 1 and state.values["context"] == {"seen": 3}


async def test_latest_checkpoint_id_from_the_pointer_matches_the_stock_read(redis_client):
    saver = LeanRedisSaver(redis_client=redis_client)
    await saver.asetup()
    thread_id = f"lean:{uuid.uuid4().hex[:8]}"  # separators in a thread id are fine
    assert await saver.alatest_checkpoint_id(thread_id) is None
    await two_turns(saver, thread_id)
    latest = await saver.aget_tuple({"configurable": {"thread_id": thread_id}})
    assert await saver.alatest_checkpoint_id(thread_id) == \
        latest.config["configurable"]["checkpoint_id"]


async def test_checkpoints_name_the_run_that_made_them(redis_client):
    saver = LeanRedisSaver(redis_client=redis_client)
    await saver.asetup()
    thread_id = f"runs-{uuid.uuid4().hex[:8]}"
    graph = chat_graph(saver)
    for run_id, text in (("run-1", "hello"), ("run-2", "and again")):
        await graph.ainvoke({"messages": [HumanMessage(text)], "steps": 0},
                            {"configurable": {"thread_id": thread_id},
                             "metadata": {"run_id": run_id, "graph_id": "chat"}})
    state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
    assert state.metadata["run_id"] == "run-2" and state.metadata["graph_id"] == "chat"
    first_run = [t async for t in saver.alist({"configurable": {"thread_id": thread_id}},
                                              filter={"run_id": "run-1"})]
    assert first_run and all(t.metadata["run_id"] == "run-1" for t in first_run)
    assert len(first_run) < len([t async for t in saver.alist(
        {"configurable": {"thread_id": thread_id}})])
