"""Checkpoint write/read latency and one agent turn's wall time, on the embedded Redis.

    .venv/bin/python -m bench.checkpoint_latency [--writes 500] [--turns 20]

Prints a Markdown table; append it to BENCHMARKS.md with the command that produced it.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint

from agents.checkpoint import create_checkpointer, create_redis
from agents.local.services import local_services
from agents.settings import Settings
from agents.system import AgentSystem


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), ordered[int(len(ordered) * 0.95)], p99


async def checkpoint_latency(settings: Settings, writes: int) -> dict[str, tuple]:
    redis = create_redis(settings.redis_url, settings.redis)
    saver = await create_checkpointer(redis, settings.redis)
    thread = f"bench-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    messages = [HumanMessage("hello " * 20), AIMessage("world " * 40)]
    put, get = [], []
    for step in range(writes):
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"messages": messages, "steps": step}
        checkpoint["channel_versions"] = {"messages": step + 1, "steps": step + 1}
        started = time.perf_counter()
        config = await saver.aput(config, checkpoint, {"step": step, "source": "loop"},
                                  {"messages": step + 1, "steps": step + 1})
        put.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await saver.aget_tuple({"configurable": {"thread_id": thread, "checkpoint_ns": ""}})
        get.append((time.perf_counter() - started) * 1000)
    await redis.aclose()
    return {"checkpoint write (aput)": percentiles(put),
            "checkpoint read (latest)": percentiles(get)}


async def turn_latency(settings: Settings, turns: int) -> dict[str, tuple]:
    results: dict[str, list[float]] = {"turn: simple (1 specialist)": [],
                                       "turn: research + code + review": []}
    prompts = {"turn: simple (1 specialist)": "Tell me about redis streams",
               "turn: research + code + review": "Research how Redis persistence works and "
               "write a Python function that parses a redis.conf line"}
    async with await AgentSystem.create(settings) as system:
        for name, prompt in prompts.items():
            for _ in range(turns):
                started = time.perf_counter()
                await system.ainvoke(prompt, f"bench-{uuid.uuid4().hex[:8]}")
                results[name].append((time.perf_counter() - started) * 1000)
    return {name: percentiles(samples) for name, samples in results.items()}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    base = Settings(redis_url=None, data_dir=Path(tempfile.mkdtemp(prefix="bench-")),
                    model={"base_url": None})
    with local_services(base) as settings:
        rows = await checkpoint_latency(settings, args.writes)
        rows |= await turn_latency(settings, args.turns)
    print(f"machine: {platform.machine()}, {platform.python_version()}, "
          f"stub model at zero latency, embedded Redis (AOF everysec)\n")
    print("| what | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|")
    for name, (p50, p95, p99) in rows.items():
        print(f"| {name} | {p50:.2f} | {p95:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
