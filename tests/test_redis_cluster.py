"""The project on a Redis Cluster: an embedded 3-master cluster (one replica each) and the
Serve app on it, driven through ``langgraph_sdk``; a replica kill and a master failover.

The cluster and the app are ``tests/redis_cluster_app.py``'s, shared with
``tests/test_redis_faults.py`` (which runs next: the master killed here is back, a replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid

import httpx
import pytest
import redis
from langgraph_sdk import get_client
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from agents.checkpoint import create_redis
from agents.local.redis_cluster import EmbeddedRedisCluster
from agents.local.redis_server import EmbeddedRedis
from agents.settings import RedisSettings

RESEARCH_AND_CODE = (
    "Research how Redis persistence works and write a Python function that parses a "
    "redis.conf line"
)
TERMINAL = {"success", "error", "interrupted", "timeout"}
pytestmark = pytest.mark.timeout(900)  # the app's start (in the first test) is slow on a busy box


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.fixture
def client(served: str):
    return get_client(url=served)


@pytest.fixture
async def rc(redis_cluster: EmbeddedRedisCluster) -> RedisCluster:
    client = create_redis(redis_cluster.url, RedisSettings(cluster=True))
    await client.initialize()  # the slot map, for get_node_from_key
    yield client
    await client.aclose()


async def thread_keys(rc: RedisCluster, tid: str) -> set[str]:
    """Every key that names the thread (a scan of every master)."""
    return {raw.decode() async for raw in rc.scan_iter(match=f"*{tid}*", count=1000)}


async def test_stream_parallel_specialists_approval_and_every_key_in_one_slot(
        client, served, rc, stub_admin):
    """A streamed research-and-code turn (three specialists in parallel), a refund that
    waits for approval (202) and is approved through another replica; every key the
    serving layer and the checkpointer wrote for the thread, sub-threads included, hashes
    to the thread's slot."""
    stub_admin.post("/config", json={"ttft_ms": 20, "tokens_per_s": 400})
    tid = f"rc-{uuid.uuid4()}"
    await client.threads.create(thread_id=tid)
    parts = [p async for p in client.runs.stream(
        tid, "supervisor", input=user(RESEARCH_AND_CODE),
        stream_mode=["messages-tuple", "custom", "values"])]
    roles = {p.data[0].get("name") for p in parts if p.event == "messages"}
    assert {"researcher", "coder", "reviewer"} <= roles
    final = [p.data for p in parts if p.event == "values"][-1]
    assert "Source: redis-persistence" in final["messages"][-1]["content"]
    written = await thread_keys(rc, tid)

    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        paused = await http.post("/api/chat", json={
            "thread_id": tid, "message": "Refund $500 to order 42", "stream": False})
        assert paused.status_code == 202, paused.text
        assert paused.json()["approvals"][0]["tool"] == "issue_refund"
        written |= await thread_keys(rc, tid)  # the coder's sub-thread waits, whole
        for _ in range(16):  # until a replica other than the pausing one answers
            approved = await http.post("/api/approve", json={
                "thread_id": tid, "action": "approve", "by": "ops"})
            if approved.status_code == 409:  # approved already by an earlier try
                break
            assert approved.status_code == 200, approved.text
            assert "Refund issued" in approved.json()["answer"]
            if approved.headers["x-replica-id"] != paused.headers["x-replica-id"]:
                break
    written |= await thread_keys(rc, tid)

    assert f"ac:{{{tid}}}:checkpoints" in written  # with its sub-threads' (one slot)
    assert any(":effect/coder/" in k for k in written)  # the refund's ledger entry
    assert any(k.endswith(":approvals") for k in written)
    assert {key_slot(k.encode()) for k in written} == {key_slot(tid.encode())}, written


async def test_join_stream_after_last_event_id_and_enqueue(client):
    """Two runs on one thread (``enqueue``) run in order; a reader that rejoins after an
    event id gets exactly what followed it."""
    tid = (await client.threads.create())["thread_id"]
    first = await client.runs.create(tid, "supervisor", input=user("Tell me about redis streams"),
                                     stream_mode=["values", "custom"])
    second = await client.runs.create(tid, "supervisor", input=user("What did I ask before?"),
                                      multitask_strategy="enqueue")
    await client.runs.join(tid, first["run_id"])
    done = await client.runs.join(tid, second["run_id"])
    assert done["messages"][-1]["content"] == 'You asked before: "Tell me about redis streams"'
    replay = [p async for p in client.runs.join_stream(tid, first["run_id"])]
    assert replay[0].event == "metadata" and replay[-1].event == "end"
    rest = [p async for p in client.runs.join_stream(tid, first["run_id"],
                                                     last_event_id=replay[2].id)]
    assert [p.id for p in rest] == [p.id for p in replay[3:]]


async def test_reject_strategy_refuses_a_busy_thread(client, stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 400})
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "supervisor", input=user("Tell me about redis streams"))
    await asyncio.sleep(0.3)
    with pytest.raises(httpx.HTTPStatusError) as info:
        await client.runs.create(tid, "supervisor", input=user("again"),
                                 multitask_strategy="reject")
    assert info.value.response.status_code == 409
    assert (await client.runs.join(tid, run["run_id"]))["messages"][-1]["type"] == "ai"


async def _running(client, tid: str, rid: str):
    run = await client.runs.get(tid, rid)
    return run if run["status"] == "running" and run.get("replica") else None


async def wait_until(predicate, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := await predicate():
            return result
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met")


async def test_supervisor_replica_killed_mid_run_finishes_elsewhere(client, served,
                                                                    stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 300})
    tid = (await client.threads.create())["thread_id"]
    rid = (await client.runs.create(tid, "supervisor", input=user(RESEARCH_AND_CODE)))["run_id"]
    running = await wait_until(lambda: _running(client, tid, rid))
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        for _ in range(200):  # requests spread over replicas: ask until the owner answers
            me = (await http.get("/whoami")).json()
            if me["replica_id"] == running["replica"]:
                os.kill(me["pid"], signal.SIGKILL)
                break
        else:
            pytest.fail("the replica running the run never answered")
    stub_admin.post("/config", json={"ttft_ms": 0})
    await client.runs.join(tid, rid)
    final = await client.runs.get(tid, rid)
    assert final["status"] == "success" and final["attempt"] == 2, final
    messages = (await client.threads.get_state(tid))["values"]["messages"]
    assert [m["type"] for m in messages].count("human") == 1
    assert "Source: redis-persistence" in messages[-1]["content"]


async def test_master_failover_runs_finish(client, redis_cluster, rc, stub_admin,
                                          request):
    """The master that holds a thread is killed mid-run; its replica is promoted and the
    run, and a new one on the thread, finish. (Replication is asynchronous: writes the
    master acknowledged in its last moments may be lost, the run is re-run from its last
    checkpoint the new master has.) The killed node comes back, a replica of its shard."""
    stub_admin.post("/config", json={"ttft_ms": 500})
    tid = (await client.threads.create())["thread_id"]
    rid = (await client.runs.create(tid, "supervisor", input=user(RESEARCH_AND_CODE)))["run_id"]
    await wait_until(lambda: _running(client, tid, rid))
    owner = rc.get_node_from_key(f"ac:{{{tid}}}:thread")
    master = next(n for n in redis_cluster.masters if n.port == owner.port)
    master.kill()
    request.addfinalizer(lambda: rejoin(master))
    survivor = next(n for n in redis_cluster.masters if n is not master)

    async def promoted() -> bool:
        """A fresh client each time: a cluster client reads the slot map once."""
        probe = create_redis(f"redis://{survivor.host}:{survivor.port}",
                             RedisSettings(cluster=True))
        try:
            with contextlib.suppress(Exception):
                await probe.initialize()
                node = probe.get_node_from_key(f"ac:{{{tid}}}:thread")
                return node.port != master.port and \
                    await probe.exists(f"ac:{{{tid}}}:thread") == 1
            return False
        finally:
            await probe.aclose()
    await wait_until(promoted, timeout_s=60)
    stub_admin.post("/config", json={"ttft_ms": 0})
    final = await wait_until(lambda: _ended(client, tid, rid), timeout_s=120)
    assert final["status"] == "success", final
    after = await client.runs.wait(tid, "supervisor", input=user("What did I ask before?"))
    assert after["messages"][-1]["content"] == f'You asked before: "{RESEARCH_AND_CODE}"'


def rejoin(node: EmbeddedRedis, timeout_s: float = 60) -> None:
    """A killed master restarted: it finds its shard's new master and replicates it."""
    node.start()
    deadline = time.monotonic() + timeout_s
    with redis.Redis(host=node.host, port=node.port, socket_timeout=5) as client:
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the restarted node did not rejoin as a replica"
            time.sleep(0.2)


async def _ended(client, tid: str, rid: str):
    with contextlib.suppress(httpx.HTTPError):
        run = await client.runs.get(tid, rid)
        return run if run["status"] in TERMINAL else None
    return None
