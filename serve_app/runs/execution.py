"""Running one run on this replica: its record, its thread's lease (with a fencing token)
and where the thread stands, in one round trip; the run marked running; its graph streamed
into its event stream under ``api.run_timeout_s``; then its end as it came: finished, timed
out, failed, interrupted (``serve_app.runs.cancellation``), handed back
(``serve_app.runs.hand_back``), lost to another attempt (stopped without a write), or
retried after a transient Redis error (``serve_app.runs.attempts``)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from redis.exceptions import NoScriptError

from agents.budgets import BudgetExceeded
from agents.redis_saver import LeanRedisSaver
from agents.streamed_state import StreamedState
from serve_app.keys import run_key, run_ref, thread_lease_key
from serve_app.runs import run_telemetry
from serve_app.runs.attempts import Attempts
from serve_app.runs.cancellation import Cancellation
from serve_app.runs.endings import RETRYABLE, Endings
from serve_app.runs.executor_context import ExecutorContext
from serve_app.runs.fencing import LeaseLost
from serve_app.runs.graph_stream import graph_events, run_config
from serve_app.runs.hand_back import HAND_BACK, HandBack
from serve_app.runs.heartbeat import Heartbeat
from serve_app.runs.records import TERMINAL, decode

log = logging.getLogger(__name__)


@dataclass
class Execution:
    context: ExecutorContext
    graphs: dict[str, CompiledStateGraph]
    checkpointer: LeanRedisSaver
    heartbeat: Heartbeat
    endings: Endings
    attempts: Attempts
    cancellation: Cancellation
    hand_back: HandBack

    async def execute(self, thread_id: str, run_id: str) -> dict[str, Any] | None:
        """Run it here until it ends, is cancelled, handed back or lost to another replica."""
        ref = run_ref(thread_id, run_id)
        run, token, latest = await self.claim(thread_id, run_id)
        if run is None or run["status"] in TERMINAL:
            await self.endings.settle(ref, run)  # (and the lease, if it took one)
            return run
        if not token:  # not the thread's turn: queued again when it is
            await self.context.pool.let_go(ref)
            return None
        task = asyncio.current_task()
        self.heartbeat.hold(ref, task, thread_lease_key(thread_id), token)
        self.cancellation.starting(run_id, task)
        started = None
        read_latest = "checkpoint_before" not in run and not run["kwargs"].get("rollback_to")
        try:
            started, read = await self._started(
                run, latest, read_latest and not run["kwargs"].get("checkpoint_id"))
        finally:
            self.cancellation.started(run_id, running=started is not None)
        if started is None:  # cancelled or moved on meanwhile
            await self.context.leases.release(thread_id, token)
            await self.context.pool.let_go(ref)
            return None
        return await self._run(started, token, read_latest, read)

    async def _run(self, run: dict[str, Any], token: str, read_latest: bool,
                   read: dict[tuple[str, str, str], Any]) -> dict[str, Any] | None:
        """Stream the started run's graph (with ``read_latest``, from the thread's latest
        checkpoint, ``read`` with the start) and end it as it came."""
        run_id, thread_id, context = run["run_id"], run["thread_id"], self.context
        context.metrics.count("runs_started")
        events = context.event_writer(run)
        observed = run_telemetry.RunTelemetry.begin(run, context.replica_id)  # span, usage
        observed.attach()
        status, error = "success", None
        final = StreamedState()
        try:
            if self.cancellation.asked(run_id):  # asked while it was being started
                raise asyncio.CancelledError
            events.append("metadata", {"run_id": run_id, "attempt": run["attempt"],
                                       **observed.metadata})
            graph = self.graphs[run["graph_id"]]
            deadline = asyncio.timeout(context.settings.run_timeout_s)
            try:
                known = {(thread_id, ""): run["checkpoint_before"]} if read_latest else None
                async with deadline, self.checkpointer.holding_writes(latest=known, read=read):
                    async for event, data in observed.watch(graph_events(
                            graph, run, run_config(run, token), self.checkpointer, final)):
                        events.append(event, data)
            except TimeoutError:
                if not deadline.expired():
                    raise
                status, error = "timeout", {
                    "error": "RunTimeout",
                    "message": f"the run took longer than {context.settings.run_timeout_s} s "
                               "(api.run_timeout_s); the thread keeps its last checkpoint"}
        except asyncio.CancelledError:
            action = self.cancellation.action(run_id)
            if action == HAND_BACK:
                await asyncio.shield(self.hand_back.run(run, token))
                return None
            status = "interrupted"
            if action == "rollback":
                run["rolled_back_by_successor"] = True
        except LeaseLost:
            log.warning("run %s lost its thread lease; stopping without writes", run_id)
            return None
        except RETRYABLE as exc:
            log.warning("run %s: Redis failed (%s); trying it again", run_id, exc)
            await asyncio.shield(self.attempts.retry(run, token, exc))
            return None
        except BudgetExceeded as exc:  # its run's, thread's or user's: which, used, limit
            status, error = "error", exc.as_error()
        except Exception as exc:
            log.exception("run %s failed", run_id)
            status, error = "error", {"error": type(exc).__name__, "message": str(exc)}
        finally:
            observed.detach()
            self.cancellation.ended(run_id, asyncio.current_task())
        return await asyncio.shield(self.endings.finish(run, status, error, token, events,
                                                        final))

    async def claim(self, thread_id: str, run_id: str
                    ) -> tuple[dict[str, Any] | None, str | None, str | None]:
        """The run's record, the thread's lease if it is the run's turn, and the thread's
        latest checkpoint as the lease was taken: one round trip (it was three)."""
        async with self.context.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(run_key(thread_id, run_id))
            self.context.leases.acquire_in(pipe, thread_id, run_id)
            self.checkpointer.latest_in(pipe, thread_id)
            raw, reply, latest = await pipe.execute(raise_on_error=False)
        for found in (raw, latest):
            if isinstance(found, Exception):
                raise found
        token = await self.context.leases.acquired(reply, thread_id, run_id)
        if isinstance(reply, NoScriptError):  # read before the lease: read it again
            return decode(raw), token, await self.checkpointer.alatest_checkpoint_id(thread_id)
        return decode(raw), token, self.checkpointer.latest_of(latest)

    async def _started(self, run: dict[str, Any], latest: str | None, read_latest: bool
                       ) -> tuple[dict[str, Any] | None, dict[tuple[str, str, str], Any]]:
        """Mark the run running (if nobody moved it since it was read); remember where
        its thread stood (``latest``, as its lease was taken), for retries and rollback.
        With ``read_latest`` (the run starts from there), that checkpoint is read in the
        same round trip: (the run, the read for ``holding_writes``)."""
        thread_id, records = run["thread_id"], self.context.records
        fields: dict[str, Any] = {"status": "running", "replica": self.context.replica_id}
        if "checkpoint_before" not in run:
            fields["checkpoint_before"] = latest
        async with self.context.redis.pipeline(transaction=False) as pipe:
            transitioned = records.transition_run_in(
                pipe, run, {"pending"}, returning=False, thread_fields={"status": "busy"},
                **fields)
            if read_latest and latest:
                self.checkpointer.checkpoint_in(pipe, thread_id, latest)
            written, *checkpoint = await pipe.execute(raise_on_error=False)
        written = await transitioned(written)
        if written is None:
            return None, {}
        read = {(thread_id, "", latest): checkpoint} if checkpoint and not any(
            isinstance(reply, Exception) for reply in checkpoint) else {}
        started = {**run, **written}
        rollback = run["kwargs"].get("rollback_to")
        if rollback is not None and not run.get("rolled_back"):
            if rollback.get("checkpoint_id") is None:
                await self.checkpointer.adelete_thread(thread_id)
            else:
                run["kwargs"]["checkpoint_id"] = rollback["checkpoint_id"]
            rolled = await records.update_run(thread_id, run["run_id"], returning=False,
                                              rolled_back=True, kwargs=run["kwargs"])
            started.update(rolled or {})
        return started, read
