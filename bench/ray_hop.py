"""One Ray Serve handle hop, measured from inside a replica (needs a running Serve).

A throwaway app (``bench-hop``) of two deployments with the options our replicas use
(``num_cpus`` 0, a high ``max_ongoing_requests``): the caller times sequential unary
calls, concurrent unary calls and streamed items through its handle to the echo replica,
against the same coroutine called in-process. Deleted afterwards.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from bench.stats import summary

APP = "bench-hop"


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class Echo:
    async def ping(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    async def tokens(self, count: int):
        for index in range(count):
            yield {"type": "token", "role": "researcher", "text": f"word{index} "}


async def _local_ping(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class Caller:
    def __init__(self, echo: DeploymentHandle):
        self.echo = echo
        self.stream = echo.options(stream=True)

    async def measure(self, calls: int = 300, concurrent: int = 50, streams: int = 20,
                      items: int = 100) -> dict[str, Any]:
        payload = {"role": "researcher", "thread_id": "t/researcher/abc", "task": "x" * 200}
        local, hop = [], []
        for _ in range(calls):
            started = time.perf_counter()
            await _local_ping(payload)
            local.append(time.perf_counter() - started)
            started = time.perf_counter()
            await self.echo.ping.remote(payload)
            hop.append(time.perf_counter() - started)
        gate = asyncio.Semaphore(concurrent)

        async def one() -> None:
            async with gate:
                await self.echo.ping.remote(payload)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(calls)))
        burst_s = time.perf_counter() - started
        per_item = []
        for _ in range(streams):
            started = time.perf_counter()
            received = 0
            async for _event in self.stream.tokens.remote(items):
                received += 1
            per_item.append((time.perf_counter() - started) / max(received, 1))
        return {
            "in_process_call_ms": summary(local, 1000),
            "unary_hop_ms": summary(hop, 1000),
            "concurrent_hops_per_s": calls / burst_s,
            "concurrency": concurrent,
            "streamed_item_ms": summary(per_item, 1000),
            "items_per_stream": items,
        }


def measure_hops() -> dict[str, Any]:
    """Deploy, measure and delete the hop app; call from a process connected to Ray."""
    handle = serve.run(Caller.bind(Echo.bind()), name=APP, route_prefix=f"/{APP}")
    try:
        handle.measure.remote().result(timeout_s=120)  # warm-up: first calls set up routes
        return handle.measure.remote().result(timeout_s=120)
    finally:
        serve.delete(APP)
