"""Micro-benchmarks of the hot path, in this process on the embedded Redis.

- checkpoint write / read (``bench.checkpoint_latency``);
- one graph step: a trivial node in a 20-step loop over a thread-sized state, with our
  Redis checkpointer and with none (the difference is what checkpointing costs a step);
- one SSE event: what the executor does per event (convert, JSON, ``XADD``) and what a
  stream reader does (``XREAD``, decode, frame), per event;
- one agent turn at zero model latency (``bench.checkpoint_latency``): our time per turn.
The Ray handle hop needs Ray and is measured in the cluster's process (``bench.ray_hop``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agents.checkpoint import create_checkpointer, create_redis
from agents.settings import Settings
from bench.checkpoint_latency import checkpoint_latency, turn_latency
from bench.loadgen import STREAM_MODE
from bench.stats import summary
from serve_app.keys import events_key
from serve_app.runs.event_log import EventWriter, entry_events
from serve_app.runs.events import convert, sse_frame

STEPS = 20


class LoopState(TypedDict):
    messages: Annotated[list, add_messages]
    steps: int


def loop_graph(checkpointer: Any) -> Any:
    def step(state: LoopState) -> dict[str, Any]:
        return {"steps": state["steps"] + 1}

    graph = StateGraph(LoopState)
    graph.add_node("step", step)
    graph.add_edge(START, "step")
    graph.add_conditional_edges("step", lambda s: "step" if s["steps"] < STEPS else END,
                                ["step", END])
    return graph.compile(checkpointer=checkpointer)


def thread_messages(turns: int = 5) -> list[Any]:
    """A thread's messages after ``turns`` research turns (question + cited answer)."""
    messages: list[Any] = []
    for turn in range(turns):
        messages.append(HumanMessage(f"Tell me about redis streams (ref {turn})"))
        messages.append(AIMessage("A Redis stream is an append-only log of entries. " * 4
                                  + "(source: redis-streams)", name="researcher"))
    return messages


async def graph_step(settings: Settings, runs: int) -> dict[str, Any]:
    """Wall and CPU time per superstep of a trivial node, with and without checkpoints."""
    redis = create_redis(settings.redis_url, settings.redis)
    saver = await create_checkpointer(redis, settings.redis)
    result: dict[str, Any] = {"steps_per_run": STEPS, "state_messages": 10}
    for name, graph in (("redis_checkpointer", loop_graph(saver)), ("no_checkpointer",
                                                                    loop_graph(None))):
        wall, cpu = [], []
        for _ in range(runs):
            config = {"configurable": {"thread_id": f"bench-step-{uuid.uuid4().hex[:8]}"}}
            started, cpu_started = time.perf_counter(), time.process_time()
            await graph.ainvoke({"messages": thread_messages(), "steps": 0}, config)
            wall.append((time.perf_counter() - started) / STEPS)
            cpu.append((time.process_time() - cpu_started) / STEPS)
        result[name] = {"wall_ms": summary(wall, 1000), "cpu_ms": summary(cpu, 1000)}
    await redis.aclose()
    return result


async def sse_event(settings: Settings, events: int) -> dict[str, Any]:
    """Per token event: the executor's side (convert, JSON, the pipelined ``EventWriter``),
    and a reader's side (``XREAD``, framing), per API event."""
    redis = create_redis(settings.redis_url, settings.redis)
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    writer = EventWriter(redis, "bench-thread", run_id, ttl_s=600)
    modes = frozenset(STREAM_MODE)
    written, cpu_started, started = 0, time.process_time(), time.perf_counter()
    for index in range(events):
        chunk = {"type": "token", "role": "researcher", "text": f"word{index} ",
                 "message_id": "lc_run--01a21240-029b-701f-b5f9-cb4db70e3a4d"}
        for event, data in convert("custom", chunk, modes, {}):
            writer.append(event, data)
            written += 1
        await asyncio.sleep(0)  # the graph yields between chunks; the writer runs then
    await writer.flush()
    write_wall, write_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    key = events_key("bench-thread", run_id)
    started, cpu_started, last, read = time.perf_counter(), time.process_time(), "0", 0
    while read < written:
        batch = await redis.xread({key: last}, count=200)
        frames = [sse_frame(event, data, event_id) for entry_id, fields in batch[0][1]
                  for event_id, event, data in entry_events(entry_id, fields)]
        b"".join(frames)
        last = batch[0][1][-1][0].decode()
        read += len(frames)
    read_wall, read_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    await redis.delete(key)
    await redis.aclose()
    return {
        "api_events_per_token": written / events,
        "write_per_api_event_ms": 1000 * write_wall / written,
        "write_cpu_per_api_event_ms": 1000 * write_cpu / written,
        "read_per_api_event_ms": 1000 * read_wall / read,
        "read_cpu_per_api_event_ms": 1000 * read_cpu / read,
    }


async def run_micro(settings: Settings, scale: float = 1.0) -> dict[str, Any]:
    """All in-process micro-benchmarks; ``scale`` < 1 for the smoke mode. The stub must be
    at zero latency while the turn benchmark runs."""
    def n(count: int) -> int:
        return max(2, int(count * scale))

    rows = await checkpoint_latency(settings, n(300))
    turns = await turn_latency(settings, n(10))
    as_ms = {name: {"p50": p50, "p95": p95, "p99": p99}
             for name, (p50, p95, p99) in {**rows, **turns}.items()}
    return {
        "checkpoint": {k: v for k, v in as_ms.items() if k.startswith("checkpoint")},
        "turn_zero_model_latency": {k: v for k, v in as_ms.items() if k.startswith("turn")},
        "graph_step": await graph_step(settings, n(30)),
        "sse_event": await sse_event(settings, n(1000)),
    }
