"""Observability: tokens and cost per run and thread, one trace per request, metrics.

In process (no Ray) with an in-memory span exporter; then against the session's cluster,
whose replicas export OTLP/HTTP to the receiver tests/conftest.py started."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents import pricing, telemetry
from agents.settings import Settings
from agents.system import AgentSystem
from serve_app.resources.schemas import RunCreate
from serve_app.resources.service import AgentService
from serve_app.telemetry.metrics import Metrics

RESEARCH = ("Research how Redis persistence works and write a Python function that parses "
            "a redis.conf line")


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """This process's spans (set once: OpenTelemetry allows one global provider)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("another global tracer provider is installed in this process")
    return exporter


@pytest.fixture
async def service(settings: Settings):
    async with await AgentSystem.create(settings) as system:
        built = AgentService.in_process(system, replica_id="obs-replica")
        metrics = Metrics()
        telemetry.set_meter(metrics)
        built.executor.start()
        yield built, metrics
        telemetry.set_meter(None)
        await built.aclose()


def test_prices_come_from_the_override_table_then_genai_prices():
    assert pricing.cost_usd("stub-model", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert pricing.cost_usd("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert pricing.cost_usd("no-such-model-anywhere", 10, 10) == 0.0


async def test_a_run_reports_tokens_cost_and_one_trace(service, spans):
    service, metrics = service
    spans.clear()
    thread, _ = await service.records.create_thread(None, {})
    body = RunCreate.model_validate({"assistant_id": "supervisor", "stream_mode": ["values"],
                                     "input": {"messages": [{"role": "user",
                                                             "content": RESEARCH}]}})
    with telemetry.span("POST /test", kind="server"):
        request_trace = telemetry.trace_id()
        run = await service.runs.create(thread["thread_id"], body, extra_modes=["chat"])
    frames = b"".join([f async for f in service.streams.events(run["thread_id"], run["run_id"])])
    events = [(e.split(b"\n")[1][7:], json.loads(e.split(b"data: ", 1)[1]))
              for e in frames.strip().split(b"\n\n") if b"data: " in e]
    record = await service.streams.wait_for_end(run["thread_id"], run["run_id"])

    assert record["status"] == "success", record
    usage = record["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0 and usage["cost_usd"] > 0
    assert {"supervisor", "researcher", "coder"} <= set(usage["by_role"]), usage["by_role"]
    assert set(usage["by_model"]) == {"stub-model"}
    assert usage["model_s"] > 0 and usage["tool_calls"] > 0 and usage["duration_s"] > 0
    assert record["trace_id"] == request_trace
    assert record["metadata"]["cost_usd"] == usage["cost_usd"]
    first, last = events[0], events[-1]
    assert first[0] == b"metadata" and first[1]["trace_id"] == request_trace
    assert last[0] == b"end" and last[1]["usage"]["cost_usd"] == usage["cost_usd"]
    thread_usage = (await service.records.get_thread(thread["thread_id"]))["usage"]
    assert thread_usage["runs"] == 1 and thread_usage["output_tokens"] == usage["output_tokens"]

    finished = spans.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in finished} == {request_trace}
    names = [s.name for s in finished]
    assert "run supervisor" in names and "call researcher" in names
    assert "invoke_agent researcher" in names and "node researcher.agent" in names
    assert any(n.startswith("execute_tool ") for n in names)
    chats = [s for s in finished if s.name == "chat stub-model"]
    assert chats and all(s.attributes["gen_ai.usage.output_tokens"] > 0 for s in chats)
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in chats) == \
        usage["input_tokens"]
    assert all("gen_ai.input.messages" not in s.attributes for s in chats)  # content off
    worker_call = next(s for s in finished if s.name == "call researcher")
    specialist = next(s for s in finished if s.name == "invoke_agent researcher")
    assert specialist.parent.span_id == worker_call.context.span_id

    text = metrics.prometheus()
    assert 'agent_cluster_tokens_total{direction="output",model="stub-model"' in text
    assert "agent_cluster_run_seconds_count" in text and "agent_cluster_tool_calls_total" in text
    assert metrics.total("cost_usd") == pytest.approx(usage["cost_usd"])


async def test_an_approval_wait_is_measured_and_the_thread_sums_its_runs(service, spans):
    service, metrics = service
    spans.clear()
    thread, _ = await service.records.create_thread(None, {})
    tid = thread["thread_id"]
    paused = await service.runs.create(tid, RunCreate.model_validate({
        "assistant_id": "supervisor",
        "input": {"messages": [{"role": "user", "content": "Refund $500 to order 42"}]}}))
    first = await service.streams.wait_for_end(tid, paused["run_id"])
    assert await service.threads.pending_approvals(tid)
    resumed = await service.runs.create(tid, RunCreate.model_validate({
        "assistant_id": "supervisor",
        "command": {"resume": {"action": "approve", "by": "ops"}}}))
    second = await service.streams.wait_for_end(tid, resumed["run_id"])

    assert second["status"] == "success" and not await service.threads.pending_approvals(tid)
    usage = (await service.records.get_thread(tid))["usage"]
    assert usage["runs"] == 2
    assert usage["cost_usd"] == pytest.approx(first["usage"]["cost_usd"] +
                                              second["usage"]["cost_usd"])
    assert metrics.total("approvals_requested") == metrics.total("approvals_decided") == 1
    assert 'approval_wait_seconds_count{graph="supervisor"} 1' in metrics.prometheus()
    wait = next(s for s in spans.get_finished_spans() if s.name == "approval wait")
    assert format(wait.context.trace_id, "032x") == second["trace_id"]
    assert format(wait.links[0].context.trace_id, "032x") == first["trace_id"]


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for frame in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.split("\n") if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


async def replica_metrics(client: httpx.AsyncClient, tries: int = 12,
                          include: frozenset[str] = frozenset()) -> dict[str, str]:
    """``GET /metrics`` of each supervisor replica HAProxy sends us to, asked ``tries``
    times and then until every replica in ``include`` has answered (at most 100 asks)."""
    seen: dict[str, str] = {}
    for ask in range(100):
        if ask >= tries and include <= seen.keys():
            break
        response = await client.get("/metrics")
        seen[response.headers["x-replica-id"]] = response.text
    assert include <= seen.keys(), (sorted(include), sorted(seen))
    return seen


def metric_sum(texts: dict[str, str], prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for text in texts.values()
               for line in text.splitlines() if line.startswith(prefix))


async def test_one_trace_across_replicas_with_usage_and_metrics(cluster_url, otlp_receiver):
    async with httpx.AsyncClient(base_url=cluster_url, timeout=120) as client:
        before = await replica_metrics(client)
        thread_id = f"obs-{time.time_ns()}"
        response = await client.post("/api/chat", json={"thread_id": thread_id,
                                                         "message": RESEARCH})
        events = sse_events(response.text)
        trace_id = response.headers["x-trace-id"]
        assert events[0][0] == "metadata" and events[0][1]["trace_id"] == trace_id
        end = events[-1][1]
        assert events[-1][0] == "end" and end["status"] == "success", events[-3:]
        assert end["usage"]["cost_usd"] > 0 and end["trace_id"] == trace_id
        record = (await client.get(f"/threads/{thread_id}/runs/{end['run_id']}")).json()
        assert record["trace_id"] == trace_id and record["usage"]["output_tokens"] > 0
        assert {"researcher", "coder"} <= set(record["usage"]["by_role"])
        after = await replica_metrics(client, include=frozenset({record["replica"]}))
    # what the replicas read after counted since (each counter only grows): the run's tokens
    out = 'agent_cluster_tokens_total{direction="output"'
    earlier = {replica: text for replica, text in before.items() if replica in after}
    assert metric_sum(after, out) - metric_sum(earlier, out) >= end["usage"]["output_tokens"]

    deadline = time.monotonic() + 20
    wanted = {"run supervisor", "invoke_agent researcher", "invoke_agent coder",
              "POST /api/chat"}
    while True:
        spans = otlp_receiver.trace(trace_id)
        names = {s["name"] for s in spans}
        if wanted <= names or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert wanted <= names, sorted(names)
    assert len({s["pid"] for s in spans}) >= 3, {(s["service"], s["pid"]) for s in spans}
    assert {"agent-cluster-supervisor", "agent-cluster-researcher",
            "agent-cluster-coder"} <= {s["service"] for s in spans}
    by_id = {s["span_id"]: s for s in spans}
    for role in ("researcher", "coder"):
        specialist = next(s for s in spans if s["name"] == f"invoke_agent {role}")
        assert by_id[specialist["parent_id"]]["name"] == f"call {role}"
    chats = [s for s in spans if s["name"].startswith("chat ")]
    assert chats and all(s["attributes"]["gen_ai.usage.output_tokens"] > 0 for s in chats)
    assert all(s["attributes"]["gen_ai.request.model"] == "stub-model" for s in chats)
    run_span = next(s for s in spans if s["name"] == "run supervisor")
    assert run_span["attributes"]["langgraph.run_id"] == end["run_id"]
