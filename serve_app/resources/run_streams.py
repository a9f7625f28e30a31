"""Following a run's events from its Redis Stream, from any replica, until it ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import RedisError

from serve_app.keys import events_key
from serve_app.resources.service_context import ServiceContext
from serve_app.runs.event_log import entry_events, resume_point
from serve_app.runs.events import HEARTBEAT, event_in_modes, sse_frame
from serve_app.runs.jsonable import dumps
from serve_app.runs.records import TERMINAL


class RunStreams:
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    async def events(self, thread_id: str, run_id: str, last_id: str = "0",
                     modes: frozenset[str] | None = None) -> AsyncIterator[bytes]:
        """SSE frames of a run from its Redis Stream, after ``last_id``, until it ends
        (with ``modes``, only the events of those API stream modes, and its control events).

        Stays open across the run's attempts and always ends with its outcome: if the run
        is over but its stream never got the end (the writes failed, or the events
        expired), the end is told from the run's record. Redis errors while waiting are
        waited out, not turned into a cut connection a client would take for the end."""
        key = events_key(thread_id, run_id)
        ended_seen = False
        after, seen_entry, seen = resume_point(last_id)
        batches = self.ctx.feed.follow(key, after, self.ctx.settings.heartbeat_s)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                if batch is None:
                    try:
                        run = await self.ctx.records.get_run(thread_id, run_id)
                    except RedisError:
                        run = {"status": "unknown"}
                    if run is None:
                        return  # deleted (rollback)
                    if run["status"] in TERMINAL:
                        if ended_seen:  # a whole idle period after the end: none will come
                            yield end_frames(run)
                            return
                        ended_seen = True
                    yield HEARTBEAT
                    continue
                frames, ended = [], False
                for entry_id, fields in batch:
                    events = entry_events(entry_id, fields)
                    if seen_entry is not None and entry_id.decode() == seen_entry:
                        events = events[seen:]  # resumed inside this entry
                    for event_id, event, data in events:
                        if modes is None or event_in_modes(event.decode(), modes):
                            frames.append(sse_frame(event, data, event_id))
                        if event in (b"end", b"error"):
                            ended = True
                            break
                    if ended:
                        break
                seen_entry = None
                if frames:
                    yield b"".join(frames)  # one chunk per batch: fewer messages to the proxy
                if ended:
                    return

    async def events_or_cancel(self, thread_id: str, run_id: str, last_id: str = "0",
                               modes: frozenset[str] | None = None) -> AsyncIterator[bytes]:
        """``events``, and the run cancelled if the client goes before its end
        (``on_disconnect: cancel``)."""
        ended = False
        try:
            async for frames in self.events(thread_id, run_id, last_id, modes):
                yield frames
            ended = True
        finally:
            if not ended:
                await asyncio.shield(self.cancel_unless_ended(thread_id, run_id))

    async def cancel_unless_ended(self, thread_id: str, run_id: str) -> None:
        run = await self.ctx.records.get_run(thread_id, run_id)
        if run is not None and run["status"] not in TERMINAL:
            await self.ctx.executor.cancel(run, "interrupt")

    async def wait_for_end(self, thread_id: str, run_id: str) -> dict[str, Any]:
        """Block until the run is terminal (whichever replica runs it)."""
        async for _ in self.events(thread_id, run_id):
            pass
        for _ in range(100):  # the record is written just before the stream's end event
            run = await self.ctx.records.get_run(thread_id, run_id)
            if run is None or run["status"] in TERMINAL:
                return run
            await asyncio.sleep(0.05)
        return run


def end_frames(run: dict[str, Any]) -> bytes:
    """The end of a run told from its record (no event id: nothing to resume after)."""
    frames = b""
    if run.get("error"):
        frames += sse_frame(b"error", dumps(run["error"]).encode(), None)
    status = {"run_id": run["run_id"], "status": run["status"]}
    return frames + sse_frame(b"end", dumps(status).encode(), None)
