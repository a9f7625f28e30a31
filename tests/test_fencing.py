"""Fenced checkpoint writes: only the holder of a thread's lease writes its checkpoints."""

from __future__ import annotations

import uuid

import pytest
from langchain_core.messages import HumanMessage

from serve_app.runs.fencing import FENCE, FencedRedisSaver, LeaseLost
from serve_app.runs.leases import Leases
from tests.test_checkpoint import chat_graph


async def holder(leases: Leases, thread_id: str) -> str:
    run_id = uuid.uuid4().hex
    assert await leases.join(thread_id, run_id, reject=False) == 1
    token = await leases.acquire(thread_id, run_id)
    assert token
    return token


async def test_a_run_that_lost_its_lease_cannot_write(redis_client):
    leases = Leases(redis_client, ttl_s=30)
    saver = FencedRedisSaver(redis_client)
    graph = chat_graph(saver)
    thread_id = f"fenced-{uuid.uuid4().hex[:8]}"
    token = await holder(leases, thread_id)

    def config(fence: str) -> dict:
        return {"configurable": {"thread_id": thread_id, FENCE: fence}}

    await graph.ainvoke({"messages": [HumanMessage("hello")], "steps": 0}, config(token))
    written = await saver.alatest_checkpoint_id(thread_id)
    assert written is not None

    # the lease moves on (the run's replica froze; the sweeper gave the thread to another)
    await leases.leave(thread_id, token.split(":")[0], token)
    successor = await holder(leases, thread_id)
    with pytest.raises(LeaseLost):
        await graph.ainvoke({"messages": [HumanMessage("stale")], "steps": 0}, config(token))
    assert await saver.alatest_checkpoint_id(thread_id) == written  # nothing was written

    await graph.ainvoke({"messages": [HumanMessage("again")], "steps": 0}, config(successor))
    state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
    assert [m.text for m in state.values["messages"]] == ["hello", "answer 1", "again",
                                                         "answer 3"]
