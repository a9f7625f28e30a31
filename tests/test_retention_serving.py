"""Issue 11 end to end: the real Ray Serve app (specialists on their own replicas, fenced
checkpoint writes) driven by ``langgraph_sdk``: pruning, approval after pruning, TTL on
create, delete leaving no key of the thread or its sub-threads."""

from __future__ import annotations

import asyncio
import time
import uuid

from langgraph_sdk import get_client
from redis.asyncio import Redis

from agents.keys import checkpoints_key

RESEARCH_AND_CODE = (
    "Research how Redis persistence works and write a Python function that parses a "
    "redis.conf line"
)


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


async def keys_of(redis: Redis, thread_id: str) -> list[str]:
    return sorted([k.decode() async for k in redis.scan_iter(match=f"*{thread_id}*",
                                                               count=5000)])


async def eventually(check, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_prune_approve_and_delete_through_the_sdk(cluster_url, redis_client):
    client = get_client(url=cluster_url)
    thread_id = f"ret-e2e-{uuid.uuid4()}"
    created = await client.threads.create(thread_id=thread_id, ttl=60)
    assert created["ttl"] == {"strategy": "delete", "ttl": 60}

    await client.runs.wait(thread_id, "supervisor", input=user(RESEARCH_AND_CODE))

    async def sub_threads_gone() -> bool:  # their results are in the parent
        fields = await redis_client.hkeys(checkpoints_key(thread_id))
        return not [f for f in fields if f.lstrip(b"!~").startswith(b"/")]
    await eventually(sub_threads_gone)

    waiting = await client.runs.wait(thread_id, "supervisor",
                                     input=user("Refund $3 to order 42"))
    assert waiting["__interrupt__"]
    assert await client.threads.prune([thread_id], strategy="keep_latest") == \
        {"pruned_count": 1}
    assert len(await client.threads.get_history(thread_id, limit=50)) == 1
    done = await client.runs.wait(thread_id, "supervisor", command={
        "resume": {"action": "approve", "by": "e2e"}})
    assert "__interrupt__" not in done
    assert "refund" in done["messages"][-1]["content"].lower()

    await client.threads.delete(thread_id)
    assert await keys_of(redis_client, thread_id) == []
    again = await client.threads.create(thread_id=thread_id)
    assert again["values"] == {}
    assert (await client.threads.get_state(thread_id))["values"] == {}
    assert await client.threads.prune([thread_id]) == {"pruned_count": 1}
    assert await keys_of(redis_client, thread_id) == []
