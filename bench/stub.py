"""The stub model's side of the figures: its settings, and the model time in each turn.

How TTFT is split. The stub logs every call it serves (``/admin/stats``: role, start and
end on the wall clock). Per target, one turn of each kind is run on the idle system with
the stub's log reset first; the model time to the first token of that kind is the
stub-reported duration of every call that finished before the client saw its first token,
plus the configured ``ttft_ms`` of the call that produced that token (likewise for the last
token). Under load, overhead = client-observed TTFT - that model time, so it holds all of
our serving and graph time, tools (Redis search), and any slowdown of the stub itself when
the box is saturated; the stub's per-call durations under load are reported beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import replace
from typing import Any

import aiohttp

from bench.loadgen import LoadConfig, LoadGenerator, ModelTime
from bench.stats import summary
from bench.workload import Turn


class StubAdmin:
    """``POST /admin/config``, ``/admin/reset`` and ``GET /admin/stats`` of the stub."""

    def __init__(self, model_base_url: str):
        self.url = model_base_url.rstrip("/").removesuffix("/v1") + "/admin"

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as session, session.request(
            method, f"{self.url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=30)
        ) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def configure(self, **settings: float) -> dict[str, Any]:
        return await self._call("POST", "/config", settings)

    async def config(self) -> dict[str, Any]:
        return await self._call("GET", "/config")

    async def reset(self) -> None:
        await self._call("POST", "/reset")

    async def stats(self) -> dict[str, Any]:
        return await self._call("GET", "/stats")


CALIBRATION = (
    Turn("research", "Tell me about redis streams (ref calibration-1)"),
    Turn("memory", "What did I ask before? (ref calibration-2)"),
    Turn("approval", "Refund $5 to order 42 (ref calibration-3)"),
)


def model_time_before(calls: list[dict[str, Any]], wall: float, ttft_s: float | None) -> float:
    """The stub's time on the critical path up to ``wall`` (a sequential turn's calls).

    Finished calls count whole; a call still streaming at ``wall`` counts up to ``wall``,
    but at most ``ttft_s`` when given (for the first token: what the client waited beyond
    the model's own first-token latency is relaying, i.e. ours).
    """
    total = 0.0
    for call in calls:
        started, finished = call["started"], call.get("finished") or wall
        if started >= wall:
            continue
        spent = min(wall, finished) - started
        if finished > wall and ttft_s is not None:
            spent = min(spent, ttft_s)
        total += spent
    return total


def calibration_turns(load: LoadConfig) -> list[Turn]:
    """A turn of each kind the workload sends (research always)."""
    shares = {"research": 1.0, "memory": load.memory_share, "approval": load.approval_share}
    return [turn for turn in CALIBRATION if shares[turn.kind] > 0]


async def calibrate(base_url: str, stub: StubAdmin, load: LoadConfig | None = None
                    ) -> tuple[ModelTime, dict[str, Any]]:
    """One turn of each kind of ``load``'s workload (default: the supervisor's) on the idle
    target: the model time on its critical path."""
    ttft_s = float((await stub.config())["ttft_ms"]) / 1000
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    detail: dict[str, Any] = {}
    config = replace(load or LoadConfig(), approval_delay_s=0.0)
    async with LoadGenerator(base_url, config) as gen:
        thread_id = await gen._create_thread()
        if thread_id is None:
            raise RuntimeError(f"calibration: cannot create a thread on {base_url}")
        for index, turn in enumerate(calibration_turns(config)):
            body = {"input": {"messages": [{"role": "user", "content": turn.text}]}}
            await stub.reset()
            run = await gen.stream_run(thread_id, body)
            if turn.kind == "approval":
                await stub.reset()  # the answer is the resume run's
                run = await gen.stream_run(thread_id, {"command": {"resume": {
                    "action": "approve", "by": "bench"}}})
            if run.error or run.first_token is None:
                raise RuntimeError(f"calibration turn {index} ({turn.kind}) failed: {run}")
            calls = (await stub.stats())["calls"]
            offset = run.wall_started - run.started  # perf_counter -> wall clock
            first[turn.kind] = model_time_before(calls, run.first_token + offset, ttft_s)
            last[turn.kind] = model_time_before(calls, run.last_token + offset, None)
            detail[turn.kind] = {
                "model_calls": len(calls),
                "client_ttft_ms": (run.first_token - run.started) * 1000,
                "model_to_first_token_ms": first[turn.kind] * 1000,
                "client_ttlt_ms": (run.last_token - run.started) * 1000,
                "model_to_last_token_ms": last[turn.kind] * 1000,
                "stub_call_ms": [round((c["finished"] - c["started"]) * 1000, 1)
                                 for c in calls if c.get("finished")],
            }
    return ModelTime(first, last), detail


class StubCallLog:
    """Polls the stub's bounded call log so no call of a long window is missed."""

    def __init__(self, stub: StubAdmin, period_s: float = 2.0):
        self.stub = stub
        self.period_s = period_s
        self.calls: dict[tuple, dict[str, Any]] = {}
        self._task: asyncio.Task | None = None

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                for call in (await self.stub.stats())["calls"]:
                    if call.get("finished"):
                        self.calls[(call["started"], call["role"], call["finished"])] = call
            await asyncio.sleep(self.period_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def durations(self, wall_start: float, wall_end: float) -> dict[str, Any]:
        """Stub-reported call durations (ms) by role, of calls started in the window."""
        by_role: dict[str, list[float]] = defaultdict(list)
        for call in self.calls.values():
            if wall_start <= call["started"] < wall_end:
                by_role[call["role"]].append(call["finished"] - call["started"])
        return {role: summary(values, 1000) for role, values in sorted(by_role.items())}
