"""Redis memory per thread: the server's own accounting, and a sample of threads' keys.

Two figures, because neither alone is the truth: ``used_memory`` grown during the run per
thread created counts everything (checkpoints, RediSearch index entries, run records and
event streams), and ``MEMORY USAGE`` of a sample of threads' keys shows what one thread
holds in keys, with its turns, since checkpoints grow with conversation length.
"""

from __future__ import annotations

import random
from typing import Any

from redis.asyncio import Redis


async def used_memory(url: str) -> int:
    redis = Redis.from_url(url)
    try:
        return int((await redis.info("memory"))["used_memory"])
    finally:
        await redis.aclose()


async def thread_keys(redis: Redis, thread_id: str) -> list[bytes]:
    """Keys naming the thread: its checkpoints, its specialists' sub-threads, and (under
    its hash tag, ``serve_app.keys``) its records, its runs' records and event streams."""
    return [k async for k in redis.scan_iter(match=f"*{thread_id}*", count=5000)]


async def redis_memory(url: str, baseline: int, turns_by_thread: dict[str, int],
                       sample: int = 8, seed: int = 1) -> dict[str, Any]:
    redis = Redis.from_url(url)
    try:
        info = await redis.info("memory")
        threads = len(turns_by_thread) or 1
        result: dict[str, Any] = {
            "used_memory_mib": info["used_memory"] / 2**20,
            "keys": await redis.dbsize(),
            "threads": len(turns_by_thread),
            "mean_turns_per_thread": sum(turns_by_thread.values()) / threads,
            "used_memory_growth_per_thread_kib": (info["used_memory"] - baseline) / threads / 1024,
        }
        chosen = random.Random(seed).sample(sorted(turns_by_thread),
                                            min(sample, len(turns_by_thread)))
        rows = []
        for thread_id in chosen:
            keys = await thread_keys(redis, thread_id)
            sizes = [await redis.memory_usage(k, samples=0) or 0 for k in keys]
            rows.append({"turns": turns_by_thread[thread_id], "keys": len(keys),
                         "kib": sum(sizes) / 1024})
        result["sampled_threads"] = sorted(rows, key=lambda r: r["turns"])
        if rows:
            result["sampled_kib_per_turn"] = (sum(r["kib"] for r in rows)
                                              / max(1, sum(r["turns"] for r in rows)))
        return result
    finally:
        await redis.aclose()
