"""Redis load per run: commands, their server time, and the Redis process's CPU.

Redis runs commands on one thread, so its CPU per run bounds the runs/s one Redis can take
whatever the replicas do: the figure that says when the database, not the serving tier,
becomes the wall on the way to 10,000 users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis


@dataclass(frozen=True)
class RedisCounters:
    calls: dict[str, int]
    usec: int
    cpu_s: float

    def per_run(self, earlier: RedisCounters, runs: int) -> dict[str, Any]:
        """What one run cost between ``earlier`` and these counters."""
        runs = max(runs, 1)
        calls = {name: n - earlier.calls.get(name, 0) for name, n in self.calls.items()}
        top = sorted(((n, name) for name, n in calls.items() if n), reverse=True)[:6]
        return {
            "runs": runs,
            "commands_per_run": sum(calls.values()) / runs,
            "command_ms_per_run": (self.usec - earlier.usec) / runs / 1000,
            "cpu_ms_per_run": (self.cpu_s - earlier.cpu_s) / runs * 1000,
            "top_commands_per_run": {name: n / runs for n, name in top},
        }


async def counters(url: str) -> RedisCounters:
    redis = Redis.from_url(url)
    try:
        stats = await redis.info("commandstats")
        cpu = await redis.info("cpu")
    finally:
        await redis.aclose()
    return RedisCounters(
        calls={k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()},
        usec=sum(v["usec"] for v in stats.values()),
        cpu_s=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
    )
