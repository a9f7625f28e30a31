"""The API's service in one process (no Ray): a run past its deadline, and input refused
before it can reach a thread."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypedDict

import pytest
from langgraph.graph import START, StateGraph
from pydantic import ValidationError

from agents.settings import Settings
from agents.system import AgentSystem
from agents.tools.backoffice import effect_counts
from serve_app.resources.api_errors import ApiError
from serve_app.resources.schemas import RunCreate, ThreadSearch
from serve_app.resources.service import AgentService


@pytest.fixture
async def service(settings: Settings):
    """The API's service over in-process graphs, with a 2 s run deadline: shorter than one
    model call of the deadline test (3 s), longer than a whole turn with an instant model
    on a loaded 2-core CI box (~0.6 s alone; a fresh-clone run once took past 1 s)."""
    short = settings.model_copy(update={"api": settings.api.model_copy(
        update={"run_timeout_s": 2.0})})
    async with await AgentSystem.create(short) as system:
        built = AgentService.in_process(system, replica_id="test-replica")
        built.executor.start()
        yield built
        await built.aclose()


async def ended(service: AgentService, run: dict, timeout_s: float = 30) -> dict:
    """The run's record once it is terminal."""
    return await asyncio.wait_for(service.streams.wait_for_end(run["thread_id"], run["run_id"]),
                                  timeout_s)


def user(text: str) -> RunCreate:
    return RunCreate.model_validate({
        "assistant_id": "supervisor", "stream_mode": ["values"],
        "input": {"messages": [{"role": "user", "content": text}]}})


async def test_a_run_past_its_deadline_ends_timeout_and_the_thread_goes_on(service, stub_admin):
    thread, _ = await service.records.create_thread(None, {})
    stub_admin.post("/config", json={"ttft_ms": 3000})  # every model call takes 3 s
    run = await service.runs.create(thread["thread_id"], user("What is Redis persistence?"))
    frames = b"".join([f async for f in service.streams.events(run["thread_id"], run["run_id"])])
    outcome = await ended(service, run)

    assert outcome["status"] == "timeout"
    assert outcome["error"]["error"] == "RunTimeout"
    assert b"event: error" in frames and b"RunTimeout" in frames
    assert (await service.records.get_thread(thread["thread_id"]))["status"] == "error"

    stub_admin.post("/config", json={"ttft_ms": 0})
    again = await service.runs.create(thread["thread_id"], user("What is Redis persistence?"))
    finished = await ended(service, again)
    assert finished["status"] == "success"
    assert (await service.records.get_thread(thread["thread_id"]))["status"] == "idle"


@pytest.mark.parametrize("messages", [[{"foo": 1}], [{"role": "wizard", "content": "hi"}], [42]])
async def test_unreadable_input_messages_are_refused_and_the_thread_stays_clean(service, messages):
    thread, _ = await service.records.create_thread(None, {})
    body = RunCreate.model_validate({"assistant_id": "supervisor",
                                     "input": {"messages": messages}})
    with pytest.raises(ApiError) as refused:
        await service.runs.create(thread["thread_id"], body)
    assert refused.value.status == 422 and "input.messages" in refused.value.detail

    assert await service.executor.leases.queued(thread["thread_id"]) == []
    assert (await service.threads.get_state(thread["thread_id"]))["values"] == {}
    ok = await service.runs.create(thread["thread_id"], user("What is Redis persistence?"))
    assert (await ended(service, ok))["status"] == "success"


async def test_state_updates_the_graph_cannot_apply_are_422(service):
    thread, _ = await service.records.create_thread(None, {})
    with pytest.raises(ApiError) as unknown_node:
        await service.threads.update_state(thread["thread_id"], {"steps": 1}, as_node="nonexistent")
    assert unknown_node.value.status == 422 and "nonexistent" in unknown_node.value.detail
    with pytest.raises(ApiError) as bad_messages:
        await service.threads.update_state(thread["thread_id"], {"messages": [{"foo": 1}]}, None)
    assert bad_messages.value.status == 422 and "values.messages" in bad_messages.value.detail


@pytest.mark.parametrize(("body", "field"), [
    ({"command": {"goto": "nowhere"}}, "command.goto"),
    ({"command": {"update": {"messages": [{"foo": 1}]}}}, "command.update.messages"),
    ({"input": {"messages": []}, "config": {"configurable": "x"}}, "configurable"),
])
async def test_run_bodies_the_graph_cannot_run_are_refused(service, body, field):
    thread, _ = await service.records.create_thread(None, {})
    with pytest.raises((ApiError, ValidationError)) as refused:
        await service.runs.create(thread["thread_id"],
                                 RunCreate.model_validate({"assistant_id": "supervisor", **body}))
    assert field in str(refused.value)
    assert await service.executor.leases.queued(thread["thread_id"]) == []


async def test_a_goto_naming_a_node_runs_from_that_node(service):
    thread, _ = await service.records.create_thread(None, {})
    body = RunCreate.model_validate({"assistant_id": "supervisor", "command": {
        "goto": "supervisor",
        "update": {"messages": [{"role": "user", "content": "What is Redis persistence?"}]}}})
    run = await service.runs.create(thread["thread_id"], body)
    assert (await ended(service, run))["status"] == "success"
    state = await service.threads.get_state(thread["thread_id"])
    assert state["values"]["messages"][-1]["type"] == "ai"


async def test_thread_search_filters_by_status_and_shows_values(service):
    tag = uuid.uuid4().hex
    idle, _ = await service.records.create_thread(None, {"tag": tag})
    waiting, _ = await service.records.create_thread(None, {"tag": tag})
    run = await service.runs.create(waiting["thread_id"], user("Refund $5 to order 42"))
    assert (await ended(service, run))["status"] == "success"

    found = await service.threads.search(ThreadSearch(metadata={"tag": tag}, status="interrupted"))
    assert [t["thread_id"] for t in found] == [waiting["thread_id"]]
    assert found[0]["values"]["messages"][0]["content"] == "Refund $5 to order 42"
    assert [i["value"]["tool"] for i in next(iter(found[0]["interrupts"].values()))] == \
        ["issue_refund"]
    both = await service.threads.search(ThreadSearch(metadata={"tag": tag}))
    assert [t["thread_id"] for t in both] == [waiting["thread_id"], idle["thread_id"]]


async def test_a_thread_of_a_graph_not_served_is_listed_and_its_state_is_409(service):
    """A graph gone from the project (or served elsewhere): its threads still list, with
    their saved values, and a state read names the graph instead of failing (was a 500)."""
    tag = uuid.uuid4().hex
    thread, _ = await service.records.create_thread(None, {"tag": tag})
    run = await service.runs.create(thread["thread_id"], user("What is Redis persistence?"))
    assert (await ended(service, run))["status"] == "success"
    supervisor = service.graphs.pop("supervisor")
    try:
        found = await service.threads.search(ThreadSearch(metadata={"tag": tag}))
        assert found[0]["values"]["messages"][0]["content"] == "What is Redis persistence?"
        with pytest.raises(ApiError) as refused:
            await service.threads.get_state(thread["thread_id"])
        assert refused.value.status == 409 and "'supervisor'" in refused.value.detail
    finally:
        service.graphs["supervisor"] = supervisor


async def test_state_carries_flat_checkpoint_ids_too(service):
    thread, _ = await service.records.create_thread(None, {})
    empty = await service.threads.get_state(thread["thread_id"])
    assert empty["checkpoint"] is None and empty["checkpoint_id"] is None
    updated = await service.threads.update_state(thread["thread_id"], {"steps": 3}, None)
    assert updated["checkpoint_id"] == updated["checkpoint"]["checkpoint_id"] is not None
    state = await service.threads.get_state(thread["thread_id"])
    assert state["checkpoint_id"] == updated["checkpoint_id"] and state["values"]["steps"] == 3


async def test_concurrent_approvals_of_one_call_apply_once(service):
    thread, _ = await service.records.create_thread(None, {})
    paused = await service.runs.create(thread["thread_id"], user("Refund $500 to order 42"))
    await ended(service, paused)
    before = (await effect_counts(service.redis)).get("issue_refund", 0)

    def approval(by: str) -> RunCreate:
        return RunCreate.model_validate({"assistant_id": "supervisor", "command": {
            "resume": {"action": "approve", "by": by}}})
    outcomes = await asyncio.gather(
        *(service.runs.create(thread["thread_id"], approval(f"ops-{i}")) for i in range(5)),
        return_exceptions=True)

    accepted = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, ApiError)]
    assert len(accepted) == 1 and len(refused) == 4
    assert {o.status for o in refused} == {409}
    assert (await ended(service, accepted[0]))["status"] == "success"
    assert (await effect_counts(service.redis)).get("issue_refund", 0) == before + 1
    assert await service.threads.pending_approvals(thread["thread_id"]) == []


class Counter(TypedDict):
    n: int


def nested_graph(checkpointer) -> Any:
    """A parent whose one node is a compiled child graph."""
    child = StateGraph(Counter)
    child.add_node("inner", lambda state: {"n": state["n"] + 1})
    child.add_edge(START, "inner")
    parent = StateGraph(Counter)
    parent.add_node("child", child.compile())
    parent.add_edge(START, "child")
    return parent.compile(checkpointer=checkpointer)


@pytest.mark.parametrize("stream_subgraphs", [True, False])
async def test_subgraph_events_carry_their_namespace_when_asked(service, stream_subgraphs):
    checkpointer = service.executor.checkpointer
    nested = AgentService(service.redis, {"nested": nested_graph(checkpointer)},
                          service.settings, "nested-replica", checkpointer, pool="nested")
    nested.executor.start()
    thread, _ = await nested.records.create_thread(None, {})
    run = await nested.runs.create(thread["thread_id"], RunCreate.model_validate({
        "assistant_id": "nested", "input": {"n": 1}, "stream_mode": ["updates"],
        "stream_subgraphs": stream_subgraphs}))
    frames = b"".join(
        [f async for f in nested.streams.events(run["thread_id"], run["run_id"])]).decode()
    await nested.aclose()

    names = [line.removeprefix("event: ") for line in frames.splitlines()
             if line.startswith("event: updates")]
    inner = [n for n in names if n.startswith("updates|child:")]
    assert "updates" in names
    assert bool(inner) == stream_subgraphs
