"""Executes runs durably: a bounded number at once per replica, pulled from the pool's
queue in Redis; at most one active run per thread across replicas; every event in a Redis
Stream; leases renewed from a thread of their own; a sweeper that re-queues runs whose
owner is gone.

A run is admitted by the API into its thread's queue and, when it is the thread's next,
into the pool's ready queue. A replica with a free slot (``api.max_concurrent_runs``)
takes the oldest ready run, takes the thread lease with a fencing token, streams the
graph, and ends with writes conditional on the run's attempt. Runs past the slots wait in
Redis, ``pending``, not in any replica's memory, so overload queues work instead of
starving every run of CPU and Redis connections, and a replica that dies loses only what
it had started: its lease expires, a sweeper re-queues the run (``attempt`` + 1) and it
continues from its last checkpoint, up to ``max_attempts``. A Redis error mid-run (a pool
wait that timed out, a restart) is retried the same way, not reported as the run's failure.
Cancel requests travel by Redis pub/sub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.checkpoint import dedicated_client, sync_client
from agents.redis_saver import Command as RedisCommand
from agents.redis_saver import LeanRedisSaver
from agents.settings import ApiSettings
from agents.streamed_state import StreamedState
from serve_app.keys import cancel_channel, parse_ref, run_key, run_ref, thread_lease_key
from serve_app.runs import run_telemetry
from serve_app.runs.concurrency import LagLimiter, Slots
from serve_app.runs.event_log import EventWriter
from serve_app.runs.events import convert, final_answer, graph_modes
from serve_app.runs.fencing import FENCE, LeaseLost
from serve_app.runs.heartbeat import Heartbeat
from serve_app.runs.jsonable import to_jsonable
from serve_app.runs.leases import Leases
from serve_app.runs.pace import pause
from serve_app.runs.records import ACTIVE, TERMINAL, Records, RunEnd, decode
from serve_app.runs.retention import Retention, ThreadView
from serve_app.runs.run_options import checkpoint_target, graph_options
from serve_app.runs.run_pool import PoolLoad, RunPool
from serve_app.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
HAND_BACK = "hand_back"
RETRYABLE = (RedisConnectionError, RedisTimeoutError)  # incl. "No connection available."
T = TypeVar("T")


def graph_input(kwargs: dict[str, Any]) -> Any:
    """The run body's ``command`` or ``input`` as LangGraph wants it."""
    command = kwargs.get("command")
    if command:
        return Command(**{k: v for k, v in command.items() if v is not None})
    return kwargs.get("input")


def run_config(run: dict[str, Any], token: str | None) -> dict[str, Any]:
    config = dict(run["kwargs"].get("config") or {})
    configurable = {**(config.get("configurable") or {}), "thread_id": run["thread_id"]}
    configurable.update(checkpoint_target(run["kwargs"]))
    if token:
        configurable[FENCE] = token
    metadata = {**(config.get("metadata") or {}), "run_id": run["run_id"],
                "thread_id": run["thread_id"], "graph_id": run["graph_id"],
                "assistant_id": run["assistant_id"], "run_attempt": run["attempt"]}
    return {**config, "configurable": configurable, "metadata": metadata}


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


class RunExecutor:
    def __init__(self, redis: Redis, graphs: dict[str, CompiledStateGraph],
                 settings: ApiSettings, replica_id: str, checkpointer: LeanRedisSaver,
                 pool: str | None = None, metrics: Metrics | None = None):
        self.redis = redis
        self.records = Records(redis)
        self.leases = Leases(redis, settings.lease_ttl_s)
        self.pool = RunPool(redis, pool or settings.run_pool, settings.lease_ttl_s)
        self.heartbeat = Heartbeat(sync_client(redis),
                                   self.pool, replica_id, settings.stall_limit_s)
        self.graphs = graphs
        self.settings = settings
        self.replica_id = replica_id
        self.checkpointer = checkpointer
        self.metrics = metrics or Metrics()
        self.load = PoolLoad(0, 0.0, 1)  # as of the last sweep
        self._waiting_since: float | None = None  # a free slot waits on an empty queue
        self._slots = Slots(1)
        self.limiter = LagLimiter(self._slots, settings.max_concurrent_runs,
                                  settings.loop_lag_target_ms,
                                  on_change=lambda size: self.metrics.gauge("run_slots", size),
                                  on_measure=self._loop_measured)
        self.limiter.retune(settings.max_concurrent_runs, settings.loop_lag_target_ms,
                            settings.overhead_budget_s)
        self._tasks: dict[str, asyncio.Task] = {}  # run id -> its task, once it holds the lease
        self._in_slots: set[asyncio.Task] = set()
        self._cancel_actions: dict[str, str] = {}
        # Runs being marked running: a cancel that comes meanwhile (the API saw the run
        # running already) is kept and acted on once the run can end cleanly.
        self._starting: set[str] = set()
        self._background: list[asyncio.Task] = []
        self._puller: asyncio.Task | None = None
        self._closing = False
        self.retention: Retention | None = None  # what a thread keeps (the service sets it)

    def start(self, *loops: Coroutine[Any, Any, None]) -> None:
        """Pull runs, listen for cancels and sweep, and run ``loops``, the replica's other
        background work (``serve_app.resources.scheduled``), stopped with these (call inside the
        event loop)."""
        self.heartbeat.start()
        self.metrics.gauge("run_slots", self._slots.size)
        self.metrics.gauge("run_slots_max", self.settings.max_concurrent_runs)
        self._puller = asyncio.create_task(self._pull_forever())
        self._background = [asyncio.create_task(self._listen_for_cancels()),
                            asyncio.create_task(self._sweep_forever()),
                            asyncio.create_task(self.limiter.run_forever())]
        if self.retention is not None:
            self._background.append(asyncio.create_task(self.retention.sweep_forever(self)))
        self._background += [asyncio.create_task(loop) for loop in loops]

    def _loop_measured(self, lag_ms: float) -> None:
        """The event loop answered (the limiter measures it every second): the heartbeat's
        sign of life, and a gauge."""
        self.heartbeat.alive()
        self.metrics.gauge("loop_lag_ms", lag_ms)

    def live_replicas(self) -> int:
        """The pool's live replicas as of the last sweep (1 before it: this one)."""
        return self.load.replicas

    def idle_for(self) -> float:
        """How long a free slot of this replica has been waiting for a run (0 if none
        is): a wait longer than a round trip means the pool's ready queue is empty."""
        since = self._waiting_since
        return 0.0 if since is None else time.monotonic() - since

    def slots_full(self) -> bool:
        """Every slot of this replica is running a run (none waits on the queue): a run
        admitted now waits in the queue for one to end, here or on another replica."""
        return self._waiting_since is None and self._slots.full

    @property
    def running(self) -> int:
        return len(self._tasks)

    @property
    def slots(self) -> int:
        """Runs this replica takes at once now (adapted to its loop's lag)."""
        return self._slots.size

    def retune(self, settings: ApiSettings) -> None:
        """New limits (``max_concurrent_runs`` and the rest) for runs taken from now on."""
        self.settings = settings
        self.limiter.retune(settings.max_concurrent_runs, settings.loop_lag_target_ms,
                            settings.overhead_budget_s)
        self.metrics.gauge("run_slots_max", settings.max_concurrent_runs)

    async def submit(self, run: dict[str, Any], first_in_thread: bool) -> None:
        """Queue an admitted run; it is ready at once if its thread has nothing before it."""
        await self.pool.add(run_ref(run["thread_id"], run["run_id"]), ready=first_in_thread,
                            not_before_ms=run.get("not_before_ms"))
        self.metrics.count("runs_admitted")

    # taking runs
    async def _pull_forever(self) -> None:
        conn = dedicated_client(self.redis)
        try:
            while not self._closing:
                if self._slots.full:  # no slot free (runs in them, or they shrank):
                    self._waiting_since = None  # waiting for a slot, not for runs
                await self._slots.acquire()
                if self._waiting_since is None:  # (still set after a wait that timed out)
                    self._waiting_since = time.monotonic()
                try:
                    ref = await self.pool.take(conn, timeout_s=1.0)
                except RedisError as exc:
                    log.warning("taking a run failed (%s); retrying", type(exc).__name__)
                    ref = self._waiting_since = None
                    await asyncio.sleep(0.5)
                if ref is not None:
                    self._waiting_since = None
                if ref is None:
                    self._slots.release()
                elif self._closing:
                    await self.pool.hand_back(ref)
                    self._slots.release()
                else:
                    task = asyncio.create_task(self._execute_in_slot(ref))
                    self._in_slots.add(task)
                    task.add_done_callback(self._in_slots.discard)
        finally:
            with contextlib.suppress(Exception):
                await conn.aclose()

    async def _execute_in_slot(self, ref: str) -> None:
        thread_id, run_id = parse_ref(ref)
        holder = asyncio.current_task()
        self.heartbeat.hold(ref, holder, thread_lease_key(thread_id))
        try:
            await self.execute(thread_id, run_id)
        except Exception:  # its lease lapses and the sweeper queues it again
            log.exception("run %s: could not be executed here", run_id)
        finally:
            self.heartbeat.drop(ref, holder)
            self._slots.release()

    # cancelling
    async def cancel(self, run: dict[str, Any], action: str = "interrupt") -> None:
        """End a run that has not started at once; ask the replica of a running one."""
        ended = await self.records.transition_run(run, {"pending"}, returning=False,
                                                  status="interrupted")
        if ended is not None:
            await self._leave(run, None)
            events = self.event_writer(run)
            events.append("end", {"run_id": run["run_id"], "status": "interrupted"})
            await events.flush()
            if action == "rollback":
                if self.retention is not None:
                    await self.retention.roll_back_safely(run)
                await self.records.delete_run(run)
            return
        await self.redis.publish(cancel_channel(self.pool.name),
                                 json.dumps({"run_id": run["run_id"], "action": action}))

    async def _listen_for_cancels(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(cancel_channel(self.pool.name))
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._cancel_here(json.loads(message["data"]))
            except RedisError as exc:  # Redis restarting: subscribe again
                log.warning("cancel listener: %s; subscribing again", type(exc).__name__)
                await asyncio.sleep(0.5)

    def _cancel_here(self, request: dict[str, str]) -> None:
        if request["run_id"] in self._tasks:
            self._cancel_task(request["run_id"], request.get("action", "interrupt"))

    def _cancel_task(self, run_id: str, action: str) -> None:
        self._cancel_actions[run_id] = action
        if run_id not in self._starting:
            self._tasks[run_id].cancel()

    def event_writer(self, run: dict[str, Any]) -> EventWriter:
        return EventWriter(self.redis, run["thread_id"], run["run_id"],
                           self.settings.event_ttl_s,
                           linger_s=self.settings.event_linger_ms / 1000)

    # one run
    async def execute(self, thread_id: str, run_id: str) -> dict[str, Any] | None:
        """Run it here until it ends, is cancelled, handed back or lost to another replica."""
        ref = run_ref(thread_id, run_id)
        run, token, latest = await self._claim(thread_id, run_id)
        if run is None or run["status"] in TERMINAL:
            await self._settle(ref, run)  # (and the lease, if it took one)
            return run
        if not token:  # not the thread's turn: queued again when it is
            await self.pool.let_go(ref)
            return None
        self.heartbeat.hold(ref, asyncio.current_task(), thread_lease_key(thread_id), token)
        self._tasks[run_id] = asyncio.current_task()
        self._starting.add(run_id)
        started = None
        read_latest = "checkpoint_before" not in run and not run["kwargs"].get("rollback_to")
        try:
            started, read = await self._started(
                run, latest, read_latest and not run["kwargs"].get("checkpoint_id"))
        finally:
            self._starting.discard(run_id)
            if started is None:  # moved on meanwhile, or failed: no task to cancel
                del self._tasks[run_id]
        if started is None:  # cancelled or moved on meanwhile
            self._cancel_actions.pop(run_id, None)
            await self.leases.release(thread_id, token)
            await self.pool.let_go(ref)
            return None
        run = started
        self.metrics.count("runs_started")
        events = self.event_writer(run)
        observed = run_telemetry.RunTelemetry.begin(run, self.replica_id)  # span, usage
        observed.attach()
        status, error = "success", None
        final = StreamedState()
        try:
            if run_id in self._cancel_actions:  # asked while it was being started
                raise asyncio.CancelledError
            events.append("metadata", {"run_id": run_id, "attempt": run["attempt"],
                                       **observed.metadata})
            graph = self.graphs[run["graph_id"]]
            deadline = asyncio.timeout(self.settings.run_timeout_s)
            try:
                known = {(thread_id, ""): run["checkpoint_before"]} if read_latest else None
                async with deadline, self.checkpointer.holding_writes(latest=known, read=read):
                    async for event, data in observed.watch(
                            self._events(graph, run, run_config(run, token), final)):
                        events.append(event, data)
            except TimeoutError:
                if not deadline.expired():
                    raise
                status, error = "timeout", {
                    "error": "RunTimeout",
                    "message": f"the run took longer than {self.settings.run_timeout_s} s "
                               "(api.run_timeout_s); the thread keeps its last checkpoint"}
        except asyncio.CancelledError:
            action = self._cancel_actions.pop(run_id, "interrupt")
            if action == HAND_BACK:
                await asyncio.shield(self._hand_back(run, token))
                return None
            status = "interrupted"
            if action == "rollback":
                run["rolled_back_by_successor"] = True
        except LeaseLost:
            log.warning("run %s lost its thread lease; stopping without writes", run_id)
            return None
        except RETRYABLE as exc:
            log.warning("run %s: Redis failed (%s); trying it again", run_id, exc)
            await asyncio.shield(self._retry(run, token, exc))
            return None
        except Exception as exc:
            log.exception("run %s failed", run_id)
            status, error = "error", {"error": type(exc).__name__, "message": str(exc)}
        finally:
            observed.detach()
            if self._tasks.get(run_id) is asyncio.current_task():
                del self._tasks[run_id]
        return await asyncio.shield(self._finish(run, status, error, token, events, final))

    async def _claim(self, thread_id: str, run_id: str
                     ) -> tuple[dict[str, Any] | None, str | None, str | None]:
        """The run's record, the thread's lease if it is the run's turn, and the thread's
        latest checkpoint as the lease was taken: one round trip (it was three)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(run_key(thread_id, run_id))
            self.leases.acquire_in(pipe, thread_id, run_id)
            self.checkpointer.latest_in(pipe, thread_id)
            raw, reply, latest = await pipe.execute(raise_on_error=False)
        for found in (raw, latest):
            if isinstance(found, Exception):
                raise found
        token = await self.leases.acquired(reply, thread_id, run_id)
        if isinstance(reply, NoScriptError):  # read before the lease: read it again
            return decode(raw), token, await self.checkpointer.alatest_checkpoint_id(thread_id)
        return decode(raw), token, self.checkpointer.latest_of(latest)

    async def _started(self, run: dict[str, Any], latest: str | None, read_latest: bool
                       ) -> tuple[dict[str, Any] | None, dict[tuple[str, str, str], Any]]:
        """Mark the run running (if nobody moved it since it was read); remember where
        its thread stood (``latest``, as its lease was taken), for retries and rollback.
        With ``read_latest`` (the run starts from there), that checkpoint is read in the
        same round trip: (the run, the read for ``holding_writes``)."""
        thread_id = run["thread_id"]
        fields: dict[str, Any] = {"status": "running", "replica": self.replica_id}
        if "checkpoint_before" not in run:
            fields["checkpoint_before"] = latest
        async with self.redis.pipeline(transaction=False) as pipe:
            transitioned = self.records.transition_run_in(
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
            rolled = await self.records.update_run(thread_id, run["run_id"], returning=False,
                                                   rolled_back=True, kwargs=run["kwargs"])
            started.update(rolled or {})
        return started, read

    async def _latest_checkpoint(self, run: dict[str, Any]) -> str | None:
        return await self.checkpointer.alatest_checkpoint_id(run["thread_id"])

    async def _input(self, run: dict[str, Any]) -> Any:
        """First attempt: the run's input. A retry that already made progress continues
        from its last checkpoint instead of adding the input twice."""
        if run["attempt"] > 1 and await self._latest_checkpoint(run) != \
                run.get("checkpoint_before"):
            return None
        return graph_input(run["kwargs"])

    async def _events(self, graph: CompiledStateGraph, run: dict[str, Any], config: dict,
                      final: StreamedState) -> AsyncIterator[tuple[str, Any]]:
        """The API events of one run; ``events`` mode is LangChain's ``astream_events``.
        ``final`` follows the thread's state as streamed (``values`` and ``updates`` are
        always streamed for it; converted to events only if the run asked for them)."""
        api_modes = frozenset(run["kwargs"].get("stream_mode") or ["values"])
        graph_in = await self._input(run)
        if "events" in api_modes:
            async for event in graph.astream_events(graph_in, config, version="v2",
                                                    **graph_options(run["kwargs"])):
                yield "events", to_jsonable(event)
            return
        partials: dict[str, Any] = {}
        subgraphs = bool(run["kwargs"].get("stream_subgraphs"))
        modes = sorted({*graph_modes(api_modes), "values", "updates"})
        async for part in graph.astream(graph_in, config, stream_mode=modes,
                                        subgraphs=subgraphs, **graph_options(run["kwargs"])):
            namespace, mode, chunk = part if subgraphs else ((), *part)
            if not namespace:
                final.follow(mode, chunk)
            suffix = "".join(f"|{step}" for step in namespace)  # e.g. updates|child:<task id>
            for event, data in convert(mode, chunk, api_modes, partials):
                yield event + suffix, data

    async def _finish(self, run: dict[str, Any], status: str, error: dict | None,
                      token: str | None, events: EventWriter, final: StreamedState
                      ) -> dict[str, Any] | None:
        """Record the outcome if this attempt still owns the run, tell its stream, free
        the thread. Each write is retried through transient Redis errors: a client must
        always learn how its run ended. The thread's state after a run that went to its
        end is the state it streamed; after any other end it is read back."""
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
        record, answered, view = await self._end(run, status, error, thread_status,
                                                 run_telemetry.run_end(run, summary),
                                                 viewing=True)
        if record is None:
            return None  # another attempt owns the run now
        await run_telemetry.ended(self.redis, record, summary, answered,
                                  self.graphs[run["graph_id"]])
        pruning: list[RedisCommand] = []  # sent with the thread's release, before it
        if self.retention is not None:  # while the run still holds its thread
            await self.retention.after_run(run, self.graphs[run["graph_id"]], state, pruning,
                                           view)
        # The thread is free before the stream says so: a client that sends its next turn
        # (or its approval) on seeing the end finds the thread idle, not busy (409).
        await self._leave(run, token, pruning)
        self.metrics.count("runs_finished", status=status)
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
            await self.records.delete_run(run)
            return None
        return record

    async def _end(self, run: dict[str, Any], status: str, error: dict | None,
                   thread_status: str, end: RunEnd | None = None, viewing: bool = False
                   ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, ThreadView | None]:
        """The terminal record, if this attempt still owns the run, with its thread's
        status and ``end``'s usage and approval (retried: a write that timed out may have
        landed, which the retry recognises); the approval the run answered, if any; and
        with ``viewing``, the thread as retention reads it after a run, in the same round
        trip (None if unread)."""
        async def once() -> tuple[dict[str, Any] | None, dict[str, Any] | None,
                                  ThreadView | None]:
            async with self.redis.pipeline(transaction=False) as pipe:
                ended = self.records.end_run_in(pipe, run, ACTIVE,
                                                {"status": thread_status, "error": error},
                                                end or RunEnd(), status=status, error=error)
                view = self.retention.view_in(pipe, run) \
                    if viewing and self.retention is not None else lambda replies: None
                replies = await pipe.execute(raise_on_error=False)
            record, answered = await ended(replies[0])
            if record is None:
                stored = await self.records.get_run(run["thread_id"], run["run_id"])
                if stored and stored["attempt"] == run["attempt"] and \
                        stored["status"] == status and stored.get("error") == error:
                    return stored, None, view(replies)
            return record, answered, view(replies)
        return await durably(once)

    async def _leave(self, run: dict[str, Any], token: str | None,
                     before: Sequence[RedisCommand] = ()) -> None:
        """Off the thread's queue and the pool's sets, after ``before`` (writes to make
        while the run holds its thread): one round trip; the thread's next run is ready."""
        thread_id, run_id = run["thread_id"], run["run_id"]
        ref = run_ref(thread_id, run_id)
        taken = token is not None and not run.get("not_before_ms")

        async def once() -> str | None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for command in before:
                    pipe.execute_command(*command)
                self.leases.leave_in(pipe, thread_id, run_id, token)
                self.pool.done_in(pipe, ref, taken)
                replies = await pipe.execute(raise_on_error=False)
            written, (left, *removed) = replies[:len(before)], replies[len(before):]
            for failed in (r for r in written if isinstance(r, Exception)):  # never fatal
                log.warning("run %s: a write before leaving failed: %s", run_id, failed)
            for failed in (r for r in removed if isinstance(r, Exception)):
                raise failed
            return (await self.leases.left(left, thread_id, run_id, token))[1]

        following = await durably(once)
        if following:
            await durably(lambda: self.pool.make_ready(run_ref(thread_id, following)))

    async def _settle(self, ref: str, run: dict[str, Any] | None) -> None:
        """Clear what a finished (or deleted) run left queued, e.g. after a crash."""
        thread_id, run_id = parse_ref(ref)
        await self._leave(run or {"thread_id": thread_id, "run_id": run_id}, None)

    async def _retry(self, run: dict[str, Any], token: str, exc: Exception) -> None:
        """A transient failure of the infrastructure: another attempt, from the last
        checkpoint, on whichever replica takes it."""
        self.metrics.count("runs_retried", reason=type(exc).__name__)
        try:
            await self._requeue(run, token)
        except RedisError:  # Redis still down: the lease lapses, the sweeper re-queues it
            log.exception("run %s: could not be queued again", run["run_id"])

    async def _requeue(self, run: dict[str, Any], token: str | None,
                       next_attempt: bool = True) -> bool:
        """Back to ``pending`` (``attempt`` + 1 unless a hand-back) and into the queue."""
        if next_attempt and run["attempt"] >= self.settings.max_attempts:
            await self._give_up(run, token)
            return False
        fields = {"attempt": run["attempt"] + 1} if next_attempt else {"handed_back": True}
        moved = await durably(lambda: self.records.transition_run(
            run, {"running"}, returning=False, status="pending", **fields))
        if token:
            await durably(lambda: self.leases.release(run["thread_id"], token))
        if moved is None:  # ended, or another attempt's now: its pool entry is not ours
            return False
        await durably(lambda: self.pool.hand_back(run_ref(run["thread_id"], run["run_id"])))
        return True

    async def _hand_back(self, run: dict[str, Any], token: str) -> None:
        """Graceful shutdown: the same attempt continues on another replica."""
        await self._requeue(run, token, next_attempt=False)

    async def _give_up(self, run: dict[str, Any], token: str | None) -> None:
        error = {"error": "RunAttemptsExhausted",
                 "message": f"the run was tried {run['attempt']} times without finishing: "
                            "its replica died or Redis failed each time "
                            f"(max_attempts={self.settings.max_attempts})"}
        if (await self._end(run, "error", error, "error"))[0] is None:
            return
        await self._leave(run, token)
        self.metrics.count("runs_finished", status="error")
        events = self.event_writer(run)
        events.append("error", error)
        events.append("end", {"run_id": run["run_id"], "status": "error"})
        with contextlib.suppress(RedisError):
            await events.flush()

    # orphans
    async def _sweep_forever(self) -> None:
        """Sweeps paced so that the cluster as a whole sweeps about every
        ``sweep_interval_s`` (any replica's sweep recovers any run), not each replica."""
        sweeps = 0
        while True:
            await pause(self.settings.sweep_interval_s, self.live_replicas)
            sweeps += 1
            try:
                await self.sweep_once(orphans=sweeps % 5 == 0)
            except Exception:
                log.exception("sweep failed")

    async def sweep_once(self, orphans: bool = True) -> list[str]:
        """Queue again every run whose owner stopped renewing its lease (and, with
        ``orphans``, every pending run nothing holds or queues); returns their ids."""
        requeued = []
        due, expired, self.load = await self.pool.survey()
        await self.pool.release(due)  # delayed runs (after_seconds) whose time has come
        for ref in expired:
            if await self.pool.forfeit(ref) and await self._recover(ref):
                requeued.append(parse_ref(ref)[1])
        if orphans:
            for ref in await self.pool.orphans(self.settings.orphan_grace_s):
                if await self._recover(ref):
                    requeued.append(parse_ref(ref)[1])
        self.metrics.gauge("runs_queued", self.load.queued)
        self.metrics.gauge("runs_running", self.running)
        return requeued

    async def _recover(self, ref: str) -> bool:
        """A run nobody holds: settle it if it ended, else queue it (a new attempt if one
        had started)."""
        thread_id, run_id = parse_ref(ref)
        run = await self.records.get_run(thread_id, run_id)
        if run is None or run["status"] in TERMINAL:
            await self._settle(ref, run)
            return False
        if run_id not in await self.leases.queued(thread_id) and \
                await self.leases.join(thread_id, run_id, reject=False) != 1:
            return False  # behind another run of its thread: queued when it is next
        if run["status"] == "pending":  # taken but never started: no attempt used
            await self.pool.make_ready(ref)
            return True
        log.warning("run %s lost its owner; queuing attempt %d", run_id, run["attempt"] + 1)
        self.metrics.count("runs_retried", reason="owner_lost")
        return await self._requeue(run, None)

    async def hand_back_all(self) -> None:
        """Graceful shutdown: take no more runs, give every run of this replica back."""
        self._closing = True
        for run_id in list(self._tasks):
            self._cancel_task(run_id, HAND_BACK)
        await asyncio.gather(*self._in_slots, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop taking runs (a blocked pop ends within its timeout) and the background
        work, bounded in time, then the heartbeat."""
        self._closing = True
        for task in self._background:
            task.cancel()
        tasks = [t for t in (self._puller, *self._background) if t is not None]
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=3.0)
            for task in stuck:
                log.warning("executor task did not stop in time: %s", task)
                task.cancel()
        await asyncio.to_thread(self.heartbeat.stop)
