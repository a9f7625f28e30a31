"""The benchmark's final audit (``bench/audit.py``) ends even when a target answers its
reads slowly: a peer that collapsed in the overload step is still working through its
backlog, and the run must still write its report. A real HTTP server plays that peer."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from bench.audit import audit
from bench.loadgen import TurnRecord
from bench.workload import Turn


def _record(thread_id: str) -> TurnRecord:
    return TurnRecord(user=0, thread_id=thread_id, index=0,
                      turn=Turn("research", f"Tell me about redis (ref {thread_id})"),
                      started=0.0, finished=1.0)


async def _slow_peer(slow: set[str]) -> tuple[web.AppRunner, str]:
    """Threads in ``slow`` never answer; the others hold their turn and an answer."""

    async def state(request: web.Request) -> web.Response:
        thread_id = request.match_info["thread_id"]
        if thread_id in slow:
            await asyncio.sleep(3600)
        messages = [{"type": "human", "content": f"Tell me about redis (ref {thread_id})"},
                    {"type": "ai", "content": "Redis is an in-memory store."}]
        return web.json_response({"values": {"messages": messages}})

    async def thread(request: web.Request) -> web.Response:
        return web.json_response({"status": "idle"})

    app = web.Application()
    app.router.add_get("/threads/{thread_id}/state", state)
    app.router.add_get("/threads/{thread_id}", thread)
    runner = web.AppRunner(app, shutdown_timeout=0.1)  # its handlers hang
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_the_audit_stops_at_its_deadline_and_counts_what_it_did_not_read():
    fast = [f"fast-{i}" for i in range(20)]
    slow = {f"slow-{i}" for i in range(3)}
    runner, url = await _slow_peer(slow)
    try:
        began = time.monotonic()
        result = await audit(url, [_record(t) for t in [*fast, *sorted(slow)]],
                             concurrency=8, timeout_s=60.0, deadline_s=1.0)
        took = time.monotonic() - began
    finally:
        await runner.cleanup()
    assert took < 5.0, took
    assert result["threads"] == 23 and result["unaudited_threads"] == 3, result
    assert result["ok"] == 20 and result["lost"] == result["read_errors"] == 0, result
