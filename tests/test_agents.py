"""The agent core against the embedded Redis and the stub model over HTTP."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.graph import START, StateGraph

from agents.checkpoint import create_checkpointer, create_redis
from agents.errors import InvalidDecisionError, RedisUnavailableError, StepLimitExceeded
from agents.local.process import free_port
from agents.local.redis_server import EmbeddedRedis
from agents.settings import Settings
from agents.state import AgentState
from agents.system import AgentSystem, config_for
from agents.tools.backoffice import REFUNDS, effect_counts

RESEARCH_AND_CODE = (
    "Research how Redis persistence works and write a Python function that parses a "
    "redis.conf line"
)


def new_thread() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def system(settings: Settings):
    async with await AgentSystem.create(settings) as built:
        yield built


async def test_reducers_append_messages_merge_context_and_overwrite_steps(settings):
    async def first(state: AgentState):
        return {"messages": [AIMessage("one")], "steps": 1, "context": {"a": 1, "b": 1}}

    async def second(state: AgentState):
        return {"messages": [AIMessage("two")], "steps": 7, "context": {"b": 2}}

    graph = StateGraph(AgentState)
    graph.add_node("first", first)
    graph.add_node("second", second)
    graph.add_edge(START, "first")
    graph.add_edge("first", "second")
    redis = create_redis(settings.redis_url, settings.redis)
    compiled = graph.compile(checkpointer=await create_checkpointer(redis, settings.redis))
    out = await compiled.ainvoke(
        {"messages": [HumanMessage("hi")], "steps": 0, "context": {"z": 0}},
        config_for(new_thread()),
    )
    assert [m.text for m in out["messages"]] == ["hi", "one", "two"]
    assert out["steps"] == 7
    assert out["context"] == {"z": 0, "a": 1, "b": 2}
    await redis.aclose()


async def test_tool_error_goes_back_to_the_model_which_corrects_itself(system):
    graph = system.specialists["researcher"]
    thread = new_thread()
    out = await graph.ainvoke({"messages": [HumanMessage("Read the document no-such-doc")]},
                              config_for(thread))
    tools = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert tools[0].name == "read_document" and tools[0].text.startswith("Error: ")
    assert [t.name for t in tools[1:]] == ["search_corpus", "read_document"]
    assert "source:" in out["messages"][-1].text


async def test_malformed_tool_arguments_are_reported_and_the_loop_goes_on(system):
    out = await system.specialists["researcher"].ainvoke(
        {"messages": [HumanMessage("malformed query about redis persistence")]},
        config_for(new_thread()),
    )
    first_call = out["messages"][1]
    assert isinstance(first_call, AIMessage) and first_call.invalid_tool_calls
    error = out["messages"][2]
    assert isinstance(error, ToolMessage) and "not valid JSON" in error.text
    assert "source: redis-persistence" in out["messages"][-1].text


async def test_specialist_step_limit_ends_a_runaway_loop(settings, system):
    thread = new_thread()
    with pytest.raises(StepLimitExceeded, match=r"researcher .* step limit of 12"):
        await system.specialists["researcher"].ainvoke(
            {"messages": [HumanMessage("loop forever")]}, config_for(thread)
        )
    state = await system.specialists["researcher"].aget_state(config_for(thread))
    assert state.values["steps"] == settings.roles["researcher"].max_steps


async def test_supervisor_step_limit(settings):
    tight = settings.model_copy(update={
        "supervisor_max_steps": 2,
        "roles": {r: s.model_copy(update={"max_steps": 2}) for r, s in settings.roles.items()},
    })
    async with await AgentSystem.create(tight) as small:
        with pytest.raises(StepLimitExceeded, match="supervisor"):
            await small.ainvoke("loop forever", new_thread())


async def test_second_turn_in_a_new_process_remembers_the_first(settings, system):
    thread = new_thread()
    first = "My favourite database is Redis, remember that"
    script = (
        "import asyncio, sys\n"
        "from agents.system import AgentSystem\n"
        "async def main():\n"
        "    async with await AgentSystem.create(redis_url=sys.argv[1], model_url=sys.argv[2])"
        " as s:\n"
        "        await s.ainvoke(sys.argv[3], sys.argv[4])\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", script, settings.redis_url, settings.model.base_url,
                    first, thread], check=True, timeout=120)
    out = await system.ainvoke("What did I ask before?", thread)
    assert out["messages"][-1].text == f'You asked before: "{first}"'
    humans = [m.text for m in out["messages"] if isinstance(m, HumanMessage)]
    assert humans == [first, "What did I ask before?"]


async def refund_pending(settings: Settings) -> tuple[str, dict]:
    """Start a refund turn in one system instance and return its pending approval."""
    thread = new_thread()
    async with await AgentSystem.create(settings) as first:
        out = await first.ainvoke("Refund $500 to order 42", thread)
        assert "__interrupt__" in out
        [pending] = await first.pending_approvals(thread)
    return thread, pending


async def test_sensitive_tool_waits_for_approval_then_runs_once(settings, redis_client):
    before = await effect_counts(redis_client)
    thread, pending = await refund_pending(settings)
    assert pending["tool"] == "issue_refund"
    assert pending["args"]["amount"] == 500 and pending["args"]["order_id"] == "42"
    assert pending["requested_by"] == "coder" and pending["role"] == "coder"
    assert (await effect_counts(redis_client)) == before  # nothing ran yet

    async with await AgentSystem.create(settings) as fresh:  # a new instance resumes
        sub_state = await fresh.specialists["coder"].aget_state(config_for(pending["thread_id"]))
        assert sub_state.interrupts  # the specialist's own thread is paused too
        out = await fresh.resume(thread, {"action": "approve", "by": "alice"})
        assert not await fresh.pending_approvals(thread)
    assert "__interrupt__" not in out
    assert "Refund issued: $500 to order 42" in out["messages"][-1].text
    after = await effect_counts(redis_client)
    assert after.get("issue_refund", 0) == before.get("issue_refund", 0) + 1


async def test_rejected_call_is_skipped_and_the_model_is_told(settings, redis_client):
    before = await effect_counts(redis_client)
    thread, _ = await refund_pending(settings)
    async with await AgentSystem.create(settings) as fresh:
        out = await fresh.resume(thread, {"action": "reject", "by": "bob", "reason": "fraud"})
    assert "The refund was not issued. Rejected by bob: fraud" in out["messages"][-1].text
    assert (await effect_counts(redis_client)) == before


async def test_edited_call_runs_with_the_edited_arguments(settings, redis_client):
    thread, pending = await refund_pending(settings)
    edited = {**pending["args"], "amount": 50}
    async with await AgentSystem.create(settings) as fresh:
        out = await fresh.resume(thread, {"action": "edit", "args": edited, "by": "carol"})
        sub = await fresh.specialists["coder"].aget_state(config_for(pending["thread_id"]))
    assert "Refund issued: $50 to order 42" in out["messages"][-1].text
    assert sub.values["decisions"][0]["action"] == "edit"
    assert sub.values["decisions"][0]["by"] == "carol"
    refunds = [json.loads(r) for r in await redis_client.lrange(REFUNDS, 0, -1)]
    assert refunds[-1]["amount"] == 50 and refunds[-1]["order_id"] == "42"


async def test_invalid_decision_is_a_typed_error(system):
    with pytest.raises(InvalidDecisionError):
        await system.resume(new_thread(), {"action": "edit"})  # edit without args
    with pytest.raises(InvalidDecisionError):
        await system.resume(new_thread(), {"action": "maybe"})


async def test_supervisor_runs_two_specialists_in_parallel(system, stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 150})
    out = await system.ainvoke(RESEARCH_AND_CODE, new_thread())
    workers = {m.name: m.response_metadata for m in out["messages"]
               if isinstance(m, AIMessage) and m.name in {"researcher", "coder", "reviewer"}}
    assert set(workers) == {"researcher", "coder", "reviewer"}
    research, code = workers["researcher"], workers["coder"]
    # Both ran at once: each started before the other finished.
    assert research["started_at"] < code["finished_at"]
    assert code["started_at"] < research["finished_at"]
    assert workers["reviewer"]["started_at"] >= max(research["finished_at"], code["finished_at"])
    final = out["messages"][-1].text
    assert "Source: redis-persistence" in final
    assert "def parse_redis_conf_line" in final and "```python" in final


async def test_stream_carries_specialist_tokens_and_tool_progress(system, stub_admin):
    stub_admin.post("/config", json={"tokens_per_s": 200})
    thread = new_thread()
    events = [event async for event in system.astream("Tell me about redis streams", thread)]
    kinds = [e["type"] for e in events]
    progress = [e["text"] for e in events if e["type"] == "progress"]
    assert any(text.startswith("Searching corpus") for text in progress)
    tokens = [e["text"] for e in events if e["type"] == "token"]
    assert kinds.index("progress") < len(kinds) - 1
    messages = (await system.supervisor.aget_state(config_for(thread))).values["messages"]
    answer = next(m for m in reversed(messages) if m.name == "researcher")
    # several events (incremental), fewer than the model's tokens (one word each: they are
    # coalesced), and nothing lost
    assert 3 <= len(tokens) < len(answer.text.split()) / 2
    assert "".join(tokens) == answer.text


async def test_redis_down_is_a_clear_error_not_a_hang(settings):
    started = time.monotonic()
    closed = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with pytest.raises(RedisUnavailableError, match="not reachable"):
        await AgentSystem.create(closed)
    assert time.monotonic() - started < 10


async def test_redis_dying_mid_session_fails_fast(settings, tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as own:
        async with await AgentSystem.create(
            settings.model_copy(update={"redis_url": own.url})
        ) as system:
            await system.ainvoke("hello", new_thread())
            own.kill()
            started = time.monotonic()
            with pytest.raises(Exception) as info:
                await asyncio.wait_for(system.ainvoke("hello again", new_thread()), 30)
            assert not isinstance(info.value, asyncio.TimeoutError)
            assert time.monotonic() - started < 20


async def test_replayed_sensitive_call_takes_effect_once(settings, redis_client):
    """Re-running the tools node from its checkpoint, as recovery after a crash does."""
    thread, pending = await refund_pending(settings)
    async with await AgentSystem.create(settings) as fresh:
        await fresh.resume(thread, {"action": "approve", "by": "alice"})
        coder = fresh.specialists["coder"]
        sub = config_for(pending["thread_id"])
        history = [s async for s in coder.aget_state_history(sub)]
        before_tools = next(s for s in history if s.next == ("tools",))
        done = (await coder.aget_state(sub)).values["messages"]
        first = json.loads(next(m for m in done if isinstance(m, ToolMessage)).text)
        counts = await effect_counts(redis_client)
        replayed = await coder.ainvoke(None, before_tools.config)
    assert await effect_counts(redis_client) == counts
    again = json.loads(next(m for m in replayed["messages"] if isinstance(m, ToolMessage)).text)
    assert again["refund_id"] == first["refund_id"]


async def test_transient_model_errors_are_retried(settings, stub_admin):
    retrying = settings.model_copy(update={
        "model": settings.model.model_copy(update={"max_retries": 4})})
    stub_admin.post("/config", json={"fault_rate": 0.3, "fault_status": 429, "seed": 3})
    async with await AgentSystem.create(retrying) as system:
        out = await system.ainvoke("Tell me about redis streams", new_thread())
    stats = stub_admin.get("/stats").json()
    assert stats["faults"] > 0
    assert "(source: redis-streams)" in out["messages"][-1].text
