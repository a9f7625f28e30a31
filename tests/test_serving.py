"""End to end: the real Ray Serve app over HTTP, driven by ``langgraph_sdk`` and plain httpx."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from langgraph_sdk import get_client

RESEARCH_AND_CODE = (
    "Research how Redis persistence works and write a Python function that parses a "
    "redis.conf line"
)
NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")


@pytest.fixture
def client(cluster_url):
    return get_client(url=cluster_url)


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


async def test_assistants_are_the_four_graphs(client):
    found = await client.assistants.search(limit=10)
    assert {a["graph_id"] for a in found} == {"supervisor", "researcher", "coder", "reviewer"}
    sup = next(a for a in found if a["graph_id"] == "supervisor")
    assert sup["assistant_id"] == str(uuid.uuid5(NAMESPACE, "supervisor"))
    assert (await client.assistants.get(sup["assistant_id"]))["graph_id"] == "supervisor"


async def test_stream_parallel_delegation_then_second_turn_remembers(client, stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 50, "tokens_per_s": 200})
    thread = await client.threads.create()
    tid = thread["thread_id"]
    parts = []
    async for part in client.runs.stream(tid, "supervisor", input=user(RESEARCH_AND_CODE),
                                         stream_mode=["messages-tuple", "custom", "values"]):
        parts.append((time.monotonic(), part.event, part.data))
    events = [p[1] for p in parts]
    assert events[0] == "metadata" and "run_id" in parts[0][2]
    token_parts = [p for p in parts if p[1] == "messages" and p[2][0].get("name")]
    roles = {p[2][0]["name"] for p in token_parts}
    assert {"researcher", "coder", "reviewer"} <= roles
    assert len(token_parts) > 9  # incremental, though tokens are coalesced (40 ms linger)
    # incremental: the first token arrives well before the run ends
    assert parts[-1][0] - token_parts[0][0] > 0.2
    progress = [p[2]["text"] for p in parts if p[1] == "custom" and p[2]["type"] == "progress"]
    assert any(t.startswith("Searching corpus") for t in progress)
    assert any(t.startswith("Running Python") for t in progress)
    final = [p[2] for p in parts if p[1] == "values"][-1]
    assert "Source: redis-persistence" in final["messages"][-1]["content"]

    second = await client.runs.wait(tid, "supervisor", input=user("What did I ask before?"))
    assert second["messages"][-1]["content"] == f'You asked before: "{RESEARCH_AND_CODE}"'
    assert (await client.threads.get(tid))["status"] == "idle"



async def test_messages_mode_sends_each_message_so_far_then_whole_ones_complete(client):
    thread = await client.threads.create()
    parts = [(p.event, p.data) async for p in client.runs.stream(
        thread["thread_id"], "supervisor", input=user("What is Redis persistence?"),
        stream_mode="messages")]
    described: set[str] = set()
    so_far: dict[str, str] = {}
    for event, data in parts:
        if event == "messages/metadata":
            described |= set(data)
        elif event in ("messages/partial", "messages/complete"):
            message = data[0]
            assert message["id"] in described  # metadata comes first
            assert message["type"] == "ai"
            assert message["content"].startswith(so_far.get(message["id"], ""))  # it grows
            so_far[message["id"]] = message["content"]
    completes = [data[0] for event, data in parts if event == "messages/complete"]
    assert [m["name"] for m in completes] == ["researcher"]  # the worker's result, whole
    state = await client.threads.get_state(thread["thread_id"])
    answer = state["values"]["messages"][-1]
    assert so_far[answer["id"]] == answer["content"] != ""  # the last partial is the answer

@pytest.mark.parametrize(("decision", "expected"), [
    ({"action": "approve", "by": "sdk"}, "Refund issued: $500 to order 42"),
    ({"action": "reject", "by": "sdk", "reason": "no"}, "Rejected by sdk: no"),
    ({"action": "edit", "by": "sdk", "args": {"amount": 20, "order_id": "42",
                                             "reason": "partial"}},
     "Refund issued: $20 to order 42"),
])
async def test_approval_interrupt_and_resume(client, decision, expected):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    out = await client.runs.wait(tid, "supervisor", input=user("Refund $500 to order 42"))
    assert out["__interrupt__"][0]["value"]["tool"] == "issue_refund"
    state = await client.threads.get_state(tid)
    pending = state["tasks"][0]["interrupts"][0]["value"]
    assert pending["args"]["amount"] == 500 and pending["requested_by"] == "coder"
    assert (await client.threads.get(tid))["status"] == "interrupted"

    done = await client.runs.wait(tid, "supervisor", command={"resume": decision})
    assert "__interrupt__" not in done
    assert expected in done["messages"][-1]["content"]
    assert (await client.threads.get(tid))["status"] == "idle"


async def test_invalid_resume_is_422_and_resume_without_interrupt_is_409(client):
    tid = (await client.threads.create())["thread_id"]
    with pytest.raises(httpx.HTTPStatusError) as info:
        await client.runs.wait(tid, "supervisor", command={"resume": {"action": "approve"}})
    assert info.value.response.status_code == 409
    await client.runs.wait(tid, "supervisor", input=user("Delete all records of customer 7"))
    with pytest.raises(httpx.HTTPStatusError) as info:
        await client.runs.wait(tid, "supervisor", command={"resume": {"action": "edit"}})
    assert info.value.response.status_code == 422


async def test_background_run_join_and_join_stream(client):
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "supervisor", input=user("Tell me about redis streams"),
                                   stream_mode=["values", "custom"])
    assert run["status"] == "pending"
    joined = await client.runs.join(tid, run["run_id"])
    assert joined["messages"][-1]["type"] == "ai"
    replay = [part async for part in client.runs.join_stream(tid, run["run_id"])]
    assert replay[0].event == "metadata" and any(p.event == "values" for p in replay)
    # resume after an event id: only what came after it
    assert all(part.id for part in replay), replay  # every event has an id
    rest = [p async for p in client.runs.join_stream(tid, run["run_id"],
                                                     last_event_id=replay[2].id)]
    assert [p.id for p in rest] == [p.id for p in replay[3:]]
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"
    listed = await client.runs.list(tid)
    assert [r["run_id"] for r in listed] == [run["run_id"]]


async def test_cancel_and_reject_strategy(client, stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 400})
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "supervisor", input=user("Tell me about redis streams"))
    await asyncio.sleep(0.3)
    with pytest.raises(httpx.HTTPStatusError) as info:
        await client.runs.create(tid, "supervisor", input=user("again"),
                                 multitask_strategy="reject")
    assert info.value.response.status_code == 409
    with pytest.raises(httpx.HTTPStatusError) as info:
        await client.threads.update_state(tid, {"steps": 0})
    assert info.value.response.status_code == 409
    await client.runs.cancel(tid, run["run_id"], wait=True)
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    assert (await client.threads.get(tid))["status"] in ("idle", "interrupted")


async def test_unknown_thread_and_assistant(client, cluster_url):
    with pytest.raises(httpx.HTTPStatusError) as info:
        await client.threads.get(str(uuid.uuid4()))
    assert info.value.response.status_code == 404
    assert "detail" in info.value.response.json()
    with pytest.raises(httpx.HTTPStatusError) as info:
        await client.runs.wait(str(uuid.uuid4()), "supervisor", input=user("hi"))
    assert info.value.response.status_code == 404
    async with httpx.AsyncClient(base_url=cluster_url) as http:
        bad = await http.post("/threads/x/runs/wait", json={"assistant_id": "nope"})
        assert bad.status_code == 404
        bad = await http.post("/api/chat", json={"thread_id": "x"})
        assert bad.status_code == 422 and "detail" in bad.json()


def sse_events(text: str) -> list[tuple[str, object]]:
    events = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines()
                     if ": " in line and not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_api_chat_streams_tokens_progress_and_answer(cluster_url, stub_admin):
    stub_admin.post("/config", json={"tokens_per_s": 200})
    async with httpx.AsyncClient(base_url=cluster_url, timeout=60) as http:
        response = await http.post("/api/chat", json={"thread_id": f"chat-{uuid.uuid4()}",
                                                      "message": "Tell me about redis streams"})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [e[0] for e in events]
    assert names[0] == "metadata" and names[-1] == "end"
    assert "progress" in names and names.count("token") >= 3
    answer = next(d for n, d in events if n == "answer")
    tokens = "".join(d["text"] for n, d in events if n == "token" and d["role"] == "researcher")
    assert answer["text"] and answer["text"] in tokens


async def test_chat_202_then_approval_on_another_replica(cluster_url, redis_client):
    async with httpx.AsyncClient(base_url=cluster_url, timeout=60) as http:
        for _ in range(16):
            tid = f"approve-{uuid.uuid4()}"
            paused = await http.post("/api/chat", json={
                "thread_id": tid, "message": "Refund $500 to order 42", "stream": False})
            assert paused.status_code == 202
            assert paused.json()["approvals"][0]["tool"] == "issue_refund"
            approved = await http.post("/api/approve", json={
                "thread_id": tid, "action": "approve", "by": "ops"})
            assert approved.status_code == 200, approved.text
            assert "Refund issued" in approved.json()["answer"]
            again = await http.post("/api/approve", json={"thread_id": tid, "action": "approve"})
            assert again.status_code == 409
            if approved.headers["x-replica-id"] != paused.headers["x-replica-id"]:
                return
    pytest.fail("every approval landed on the replica that paused it")


async def test_events_and_updates_stream_modes(client):
    tid = (await client.threads.create())["thread_id"]
    parts = [p async for p in client.runs.stream(tid, "supervisor", input=user("hello there"),
                                                 stream_mode="events")]
    kinds = {p.data["event"] for p in parts if p.event == "events"}
    assert {"on_chain_start", "on_chat_model_stream", "on_chain_end"} <= kinds
    parts = [p async for p in client.runs.stream(tid, "supervisor", input=user("hello again"),
                                                 stream_mode="updates")]
    updates = [p.data for p in parts if p.event == "updates"]
    assert [next(iter(u)) for u in updates][:2] == ["supervisor", "worker"]
    history = await client.threads.get_history(tid, limit=3)
    assert len(history) == 3 and history[0]["checkpoint"]["checkpoint_id"]


async def test_model_outage_is_a_run_error_and_the_thread_stays_usable(client, stub_admin):
    tid = (await client.threads.create())["thread_id"]
    stub_admin.post("/config", json={"fault_rate": 1.0, "fault_status": 500})
    out = await client.runs.wait(tid, "supervisor", input=user("hello"), raise_error=False)
    assert "500" in out["__error__"]["message"], out
    thread = await client.threads.get(tid)
    assert thread["status"] == "error" and thread["error"] == out["__error__"]
    stub_admin.post("/config", json={"fault_rate": 0.0})
    again = await client.runs.wait(tid, "supervisor", input=user("What did I ask before?"))
    assert again["messages"][-1]["content"] == 'You asked before: "hello"'
    assert (await client.threads.get(tid))["status"] == "idle"


async def test_thread_search_and_delete(client):
    tag = uuid.uuid4().hex
    made = [await client.threads.create(metadata={"tag": tag, "n": n}) for n in range(3)]
    found = await client.threads.search(metadata={"tag": tag}, limit=2)
    assert [t["thread_id"] for t in found] == [made[2]["thread_id"], made[1]["thread_id"]]
    await client.threads.delete(made[2]["thread_id"])
    found = await client.threads.search(metadata={"tag": tag}, limit=10)
    assert {t["thread_id"] for t in found} == {made[0]["thread_id"], made[1]["thread_id"]}
    with pytest.raises(httpx.HTTPStatusError) as info:
        await client.threads.get(made[2]["thread_id"])
    assert info.value.response.status_code == 404


async def test_time_travel_fork_and_housekeeping_through_the_sdk(client):
    thread = await client.threads.create(metadata={"owner": "a"})
    tid = thread["thread_id"]
    first = await client.runs.wait(tid, "supervisor", input=user("hello"))
    await client.runs.wait(tid, "supervisor", input=user("What did I ask before?"))
    history = await client.threads.get_history(tid, limit=50)
    after_first = next(s for s in history if s["values"].get("messages") and
                       s["values"]["messages"][-1]["id"] == first["messages"][-1]["id"])

    past = await client.threads.get_state(tid, checkpoint_id=after_first["checkpoint_id"])
    assert past["values"] == after_first["values"]
    same = await client.threads.get_state(tid, checkpoint=after_first["checkpoint"])
    assert same["checkpoint"] == after_first["checkpoint"]
    with pytest.raises(httpx.HTTPStatusError) as missing:
        await client.threads.get_state(tid, checkpoint_id="1f000000-0000-6000-8000-000000000000")
    assert missing.value.response.status_code == 404

    fork = await client.threads.update_state(tid, {"steps": 0},
                                             checkpoint_id=after_first["checkpoint_id"])
    forked = await client.threads.get_state(tid)
    assert forked["checkpoint_id"] == fork["checkpoint_id"]
    assert forked["parent_checkpoint_id"] == after_first["checkpoint_id"]
    assert len(forked["values"]["messages"]) == len(after_first["values"]["messages"])

    updated = await client.threads.update(tid, metadata={"tag": "x"})
    assert updated["metadata"]["owner"] == "a" and updated["metadata"]["tag"] == "x"

    runs = await client.runs.list(tid)
    await client.runs.delete(tid, runs[0]["run_id"])
    assert [r["run_id"] for r in await client.runs.list(tid)] == [runs[1]["run_id"]]


async def test_assistant_graph_and_schemas(client):
    drawing = await client.assistants.get_graph("supervisor")
    assert {"supervisor", "worker"} <= {node["id"] for node in drawing["nodes"]}
    schemas = await client.assistants.get_schemas("supervisor")
    assert {"messages", "steps", "context"} <= set(schemas["input_schema"]["properties"])
