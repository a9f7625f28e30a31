"""How a run's end is written, once, by the attempt that owns it: the terminal record with
its thread's status, usage and the approval it answered; retention applied while the run
still holds its thread; the thread and the pool left in one round trip (the thread's next
run made ready); the end told to its stream. Each write is retried through transient Redis
errors (``durably``): a client must always learn how its run ended, and a write that timed
out but landed is recognised, not made twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from langgraph.graph.state import CompiledStateGraph
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.redis_saver import Command as RedisCommand
from agents.streamed_state import StreamedState
from serve_app.keys import parse_ref, run_key, run_ref
from serve_app.runs import run_telemetry
from serve_app.runs.concurrency import LagLimiter
from serve_app.runs.event_log import EventWriter
from serve_app.runs.events import final_answer
from serve_app.runs.executor_context import ExecutorContext
from serve_app.runs.jsonable import to_jsonable
from serve_app.runs.records import ACTIVE, RunEnd
from serve_app.runs.retention import Retention, ThreadView

log = logging.getLogger(__name__)
RETRYABLE = (RedisConnectionError, RedisTimeoutError)  # incl. "No connection available."
T = TypeVar("T")


async def durably(op: Callable[[], Awaitable[T]], within_s: float = 30.0) -> T:
    """``op()`` again on a transient Redis error, with backoff, for up to ``within_s``."""
    deadline, backoff = time.monotonic() + within_s, 0.05
    while True:
        try:
            return await op()
        except RETRYABLE:
            if time.monotonic() + backoff > deadline:
                raise
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)


@dataclass
class Endings:
    context: ExecutorContext
    graphs: dict[str, CompiledStateGraph]
    limiter: LagLimiter  # learns each run's overhead
    retention: Retention | None

    async def finish(self, run: dict[str, Any], status: str, error: dict | None,
                     token: str | None, events: EventWriter, final: StreamedState
                     ) -> dict[str, Any] | None:
        """Record the outcome of a run that ran, if this attempt still owns it, tell its
        stream, free the thread. The thread's state after a run that went to its end is
        the state it streamed; after any other end it is read back."""
        events.hold()  # its last events go with its end
        run_id, thread_id = run["run_id"], run["thread_id"]
        interrupts, answer, state = [], "", None
        if not error:
            graph = self.graphs[run["graph_id"]]
            try:
                state = final if status == "success" and final.values is not None else \
                    await durably(lambda: graph.aget_state(
                        {"configurable": {"thread_id": thread_id}}))
            except Exception as exc:  # the run ended, but its thread cannot be read back
                log.exception("run %s: reading its final state failed", run_id)
                status, error = "error", {"error": type(exc).__name__, "message": str(exc)}
            else:
                interrupts = [{"value": i.value, "id": i.id} for i in state.interrupts]
                answer = final_answer(state.values)
        summary = run_telemetry.finish(run, status, error, bool(interrupts))  # tokens, cost
        if "usage" in summary:
            self.limiter.run_ended(summary["usage"]["other_s"])
        stopped = interrupts or (state is not None and state.next)  # incl. breakpoints
        thread_status = "error" if error else "interrupted" if stopped else "idle"
        # A run quicker than its first write's linger: the stream must exist before the
        # end, for retention to set its grace (a first write's TTL is the hour's).
        if not events.started:
            with contextlib.suppress(RedisError):
                await events.flush()
        record, answered, view = await self.end(run, status, error, thread_status,
                                                 run_telemetry.run_end(run, summary),
                                                 viewing=True)
        if record is None:
            return None  # another attempt owns the run now
        graph = self.graphs[run["graph_id"]]
        await run_telemetry.ended(self.context.redis, record, summary, answered, graph)
        pruning: list[RedisCommand] = []  # sent with the thread's release, before it
        if self.retention is not None:  # while the run still holds its thread
            await self.retention.after_run(run, graph, state, pruning, view)
        # The thread is free before the stream says so: a client that sends its next turn
        # (or its approval) on seeing the end finds the thread idle, not busy (409).
        await self.leave(run, token, pruning)
        self.context.metrics.count("runs_finished", status=status)
        api_modes = run["kwargs"].get("stream_mode") or []
        if error:
            events.append("error", error)
        elif "chat" in api_modes:
            if interrupts:
                events.append("approval", to_jsonable(interrupts[0]))
            else:
                events.append("answer", {"text": answer})
        events.append("end", {"run_id": run_id, "status": status,
                              **run_telemetry.end_event(summary)})
        try:
            await events.flush()
        except RedisError:  # readers learn the end from the record (service.stream_events)
            log.exception("run %s: its end could not be streamed", run_id)
        if run.get("rolled_back_by_successor"):  # rollback: the run is gone, as if never made
            await self.context.records.delete_run(run)
            return None
        return record

    async def end(self, run: dict[str, Any], status: str, error: dict | None,
                  thread_status: str, end: RunEnd | None = None, viewing: bool = False
                  ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, ThreadView | None]:
        """The terminal record, if this attempt still owns the run, with its thread's
        status and ``end``'s usage and approval (a retry recognises a write that timed
        out but landed); the approval the run answered, if any; and with ``viewing``, the
        thread as retention reads it after a run, in the same round trip (None if unread)."""
        records = self.context.records

        async def once() -> tuple[dict[str, Any] | None, dict[str, Any] | None,
                                  ThreadView | None]:
            async with self.context.redis.pipeline(transaction=False) as pipe:
                ended = records.end_run_in(pipe, run, ACTIVE,
                                           {"status": thread_status, "error": error},
                                           end or RunEnd(), status=status, error=error)
                view = self.retention.view_in(pipe, run) \
                    if viewing and self.retention is not None else lambda replies: None
                replies = await pipe.execute(raise_on_error=False)
            record, answered = await ended(replies[0])
            if record is None:
                stored = await records.get_run(run["thread_id"], run["run_id"])
                if stored and stored["attempt"] == run["attempt"] and \
                        stored["status"] == status and stored.get("error") == error:
                    return stored, None, view(replies)
            return record, answered, view(replies)
        return await durably(once)

    async def leave(self, run: dict[str, Any], token: str | None,
                    before: Sequence[RedisCommand] = ()) -> None:
        """Off the thread's queue and the pool's sets, after ``before`` (writes to make
        while the run holds its thread): one round trip; the thread's next run is ready."""
        leases, pool = self.context.leases, self.context.pool_of(run.get("graph_id"))
        thread_id, run_id = run["thread_id"], run["run_id"]
        ref = run_ref(thread_id, run_id)
        taken = token is not None and not run.get("not_before_ms")

        async def once() -> str | None:
            async with self.context.redis.pipeline(transaction=False) as pipe:
                for command in before:
                    pipe.execute_command(*command)
                leases.leave_in(pipe, thread_id, run_id, token)
                pool.done_in(pipe, ref, taken)
                replies = await pipe.execute(raise_on_error=False)
            written, (left, *removed) = replies[:len(before)], replies[len(before):]
            for failed in (r for r in written if isinstance(r, Exception)):  # never fatal
                log.warning("run %s: a write before leaving failed: %s", run_id, failed)
            for failed in (r for r in removed if isinstance(r, Exception)):
                raise failed
            return (await leases.left(left, thread_id, run_id, token))[1]

        following = await durably(once)
        if following:
            if self.context.routes:  # the thread's next run may be another graph's
                graph_id = await durably(lambda: self.context.redis.hget(
                    run_key(thread_id, following), "graph_id"))
                pool = self.context.pool_of(json.loads(graph_id) if graph_id else None)
            await durably(lambda: pool.make_ready(run_ref(thread_id, following)))

    async def settle(self, ref: str, run: dict[str, Any] | None) -> None:
        """Clear what a finished (or deleted) run left queued, e.g. after a crash."""
        thread_id, run_id = parse_ref(ref)
        await self.leave(run or {"thread_id": thread_id, "run_id": run_id}, None)
