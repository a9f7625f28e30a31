"""Fault tests on the real Serve app: replicas killed mid-run, Redis killed and restarted,
concurrent runs on one thread under each multitask strategy, many runs through a kill."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import time
import uuid

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import APIStatusError

from agents.local.redis_server import EmbeddedRedis

RESEARCH_AND_CODE = (
    "Research how Redis persistence works and write a Python function that parses a "
    "redis.conf line"
)
TERMINAL = {"success", "error", "interrupted", "timeout"}


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.fixture
def client(cluster_url):
    return get_client(url=cluster_url)


def replica_pids(deployment: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"ServeReplica:agent-cluster:{deployment}"],
                         capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


async def pid_of_replica(http: httpx.AsyncClient, replica_id: str) -> int:
    """Ask /whoami until the replica we want answers (requests spread over replicas)."""
    for _ in range(200):
        me = (await http.get("/whoami")).json()
        if me["replica_id"] == replica_id:
            return me["pid"]
    raise AssertionError(f"replica {replica_id} never answered")


async def wait_until(predicate, timeout_s: float = 60, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := await predicate():
            return result
        await asyncio.sleep(every_s)
    raise TimeoutError("condition not met")


async def wait_serving(http: httpx.AsyncClient, replicas: int = 2) -> None:
    """Until Serve has replaced killed replicas (so later tests see a whole cluster)."""
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while len(seen) < replicas and time.monotonic() < deadline:
        try:
            seen.add((await http.get("/whoami", timeout=2)).json()["replica_id"])
        except httpx.HTTPError:
            await asyncio.sleep(0.2)


async def test_supervisor_replica_killed_mid_run_finishes_elsewhere(client, cluster_url,
                                                                    stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 300})
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "supervisor", input=user(RESEARCH_AND_CODE),
                                   stream_mode=["values", "custom"])
    rid = run["run_id"]
    async with httpx.AsyncClient(base_url=cluster_url, timeout=30) as http:
        running = await wait_until(lambda: _running(client, tid, rid))
        first = []
        async for part in client.runs.join_stream(tid, rid):
            first.append(part)
            if part.event == "custom" and part.data.get("type") == "progress":
                break  # a specialist call is in flight
        os.kill(await pid_of_replica(http, running["replica"]), signal.SIGKILL)
        killed_at = time.monotonic()
        last_id = first[-1].id
        rest = [p async for p in client.runs.join_stream(tid, rid, last_event_id=last_id)]
        reclaimed = time.monotonic() - killed_at
        await wait_serving(http)
    final = await client.runs.get(tid, rid)
    assert final["status"] == "success" and final["attempt"] == 2, final
    assert final["replica"] != running["replica"]
    ids = [p.id for p in first + rest]
    assert len(ids) == len(set(ids)) and ids == sorted(ids, key=_stream_id)
    assert [p.data["attempt"] for p in rest if p.event == "metadata"] == [2]
    assert rest[-1].event == "end"
    messages = (await client.threads.get_state(tid))["values"]["messages"]
    names = [m.get("name") for m in messages if m["type"] == "ai"]
    assert [m["type"] for m in messages].count("human") == 1
    assert sorted(n for n in names if n != "supervisor") == ["coder", "researcher", "reviewer"]
    assert "Source: redis-persistence" in messages[-1]["content"]
    assert reclaimed < 30


def _stream_id(event_id: str) -> tuple[int, int, float]:
    """An event id's place: its entry's id, then its index in the entry (``<entry>.<i>``
    for the events before an entry's last, which carries the entry's id alone)."""
    entry, _, index = event_id.partition(".")
    ms, seq = entry.split("-")
    return int(ms), int(seq), int(index) if index else math.inf


async def _running(client, tid: str, rid: str):
    run = await client.runs.get(tid, rid)
    return run if run["status"] == "running" and run.get("replica") else None


async def test_specialist_replica_killed_mid_call_is_retried(client, cluster_url, stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 800})
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "supervisor", input=user("Tell me about redis streams"),
                                   stream_mode=["values", "custom"])
    async for part in client.runs.join_stream(tid, run["run_id"], stream_mode="custom"):
        if part.event == "custom" and part.data.get("type") == "progress":
            break
    stub_admin.post("/config", json={"ttft_ms": 0})
    for pid in replica_pids("researcher"):
        os.kill(pid, signal.SIGKILL)
    out = await client.runs.join(tid, run["run_id"])
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"
    workers = [m for m in out["messages"] if m.get("name") == "researcher"]
    assert len(workers) == 1 and "failed" not in workers[0]["content"]


async def test_redis_killed_while_approvals_wait_then_restarted(client, settings,
                                                               restarted_redis):
    threads = []
    for _ in range(3):
        tid = (await client.threads.create())["thread_id"]
        out = await client.runs.wait(tid, "supervisor", input=user("Refund $500 to order 42"))
        assert "__interrupt__" in out
        threads.append(tid)
    await asyncio.sleep(1.5)  # AOF everysec: what is older than ~1 s is on disk
    port = int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    [pid] = [int(p) for p in subprocess.run(
        ["pgrep", "-f", f"redis-server 127.0.0.1:{port}"], capture_output=True, text=True
    ).stdout.split()]
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.5)
    restarted_redis.append(EmbeddedRedis(settings.data_dir / "redis", port=port).start())
    for tid in threads:
        assert (await client.threads.get(tid))["status"] == "interrupted"
        pending = (await client.threads.get_state(tid))["interrupts"]
        assert pending[0]["value"]["tool"] == "issue_refund"
        done = await client.runs.wait(tid, "supervisor",
                                      command={"resume": {"action": "approve", "by": "t"}})
        assert "Refund issued" in done["messages"][-1]["content"]


@pytest.mark.parametrize("strategy", ["reject", "enqueue", "interrupt", "rollback"])
async def test_two_runs_at_once_follow_the_multitask_strategy(client, stub_admin, strategy):
    stub_admin.post("/config", json={"ttft_ms": 150})
    tid = (await client.threads.create())["thread_id"]
    first = await client.runs.create(tid, "supervisor", input=user("first question"))
    await wait_until(lambda: _running(client, tid, first["run_id"]))
    try:
        second = await client.runs.create(tid, "supervisor", input=user("second question"),
                                          multitask_strategy=strategy)
    except httpx.HTTPStatusError as exc:
        assert strategy == "reject" and exc.response.status_code == 409
        await client.runs.join(tid, first["run_id"])
        humans = _humans(await client.threads.get_state(tid))
        assert humans == ["first question"]
        return
    assert strategy != "reject"
    await client.runs.join(tid, second["run_id"])
    second_run = await client.runs.get(tid, second["run_id"])
    assert second_run["status"] == "success"
    humans = _humans(await client.threads.get_state(tid))
    if strategy == "enqueue":
        first_run = await client.runs.get(tid, first["run_id"])
        assert first_run["status"] == "success"
        assert humans == ["first question", "second question"]
    elif strategy == "interrupt":
        assert (await client.runs.get(tid, first["run_id"]))["status"] == "interrupted"
        assert humans[-1] == "second question" and humans.count("second question") == 1
    else:  # rollback: the first run and what it wrote are gone
        with pytest.raises(httpx.HTTPStatusError):
            await client.runs.get(tid, first["run_id"])
        assert humans == ["second question"]
    messages = (await client.threads.get_state(tid))["values"]["messages"]
    # checkpoints never interleave: each question is followed by its own answers
    order = [m["content"] if m["type"] == "human" else m["type"] for m in messages]
    assert order[-1] == "ai"


async def create_retrying(client, thread_id: str, **kwargs) -> dict:
    """A burst past the cluster's admission limits is refused (503, ``Retry-After``): a
    client waits as asked and sends the run again."""
    for _ in range(60):
        try:
            return await client.runs.create(thread_id, "supervisor", **kwargs)
        except APIStatusError as exc:
            if exc.status_code != 503:
                raise
            await asyncio.sleep(float(exc.response.headers["Retry-After"]))
    raise AssertionError("never admitted")


async def join_retrying(client, thread_id: str, run_id: str) -> dict:
    """A request in flight on a killed replica fails, or (through HAProxy) can hang until
    the client gives up (Serve does not retry it): a client retries, and the join is
    answered by a live replica."""
    for attempt in range(5):
        try:
            return await asyncio.wait_for(client.runs.join(thread_id, run_id), 60)
        except (httpx.HTTPStatusError, httpx.TransportError, TimeoutError):
            if attempt == 4:
                raise
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


def _humans(state: dict) -> list[str]:
    return [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]


async def test_many_threads_survive_a_replica_kill(client, cluster_url, stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 100})
    n = 200
    threads = [str(uuid.uuid4()) for _ in range(n)]
    slots = asyncio.Semaphore(50)  # the client's connection pool, not the server, is the cap

    async def bounded(call):
        async with slots:
            return await call

    runs = await asyncio.gather(*(bounded(create_retrying(
        client, tid, input=user(f"question {i}"), if_not_exists="create"))
        for i, tid in enumerate(threads)))
    await asyncio.sleep(1.0)
    os.kill(replica_pids("supervisor")[0], signal.SIGKILL)
    await asyncio.gather(*(bounded(join_retrying(client, r["thread_id"], r["run_id"]))
                           for r in runs))
    async with httpx.AsyncClient(base_url=cluster_url) as http:
        await wait_serving(http)
    ended = [await client.runs.get(r["thread_id"], r["run_id"]) for r in runs]
    statuses = [run["status"] for run in ended]
    assert all(s in TERMINAL for s in statuses)
    assert statuses.count("success") == n, [(r["status"], r["attempt"], r.get("error"))
                                            for r in ended if r["status"] != "success"]
    for i, tid in enumerate(threads):
        messages = (await client.threads.get_state(tid))["values"]["messages"]
        assert [m["content"] for m in messages if m["type"] == "human"] == [f"question {i}"]
        assert [m.get("name") for m in messages].count("researcher") == 1
