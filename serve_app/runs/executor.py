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

``RunExecutor`` takes runs into its slots; it builds its parts, each complete: ``execution``
(one run; ``graph_stream``), ``endings`` (a run's end, written once), ``attempts`` (another
attempt, or none), ``recovery`` (sweeps for others' runs), ``cancellation``, ``hand_back``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agents.checkpoint import dedicated_client, sync_client
from agents.redis_saver import LeanRedisSaver
from agents.settings import ApiSettings
from serve_app.keys import parse_ref, run_ref, thread_lease_key
from serve_app.runs.attempts import Attempts
from serve_app.runs.cancellation import Cancellation
from serve_app.runs.concurrency import LagLimiter, Slots
from serve_app.runs.endings import Endings
from serve_app.runs.execution import Execution
from serve_app.runs.executor_context import ExecutorContext
from serve_app.runs.hand_back import HandBack
from serve_app.runs.heartbeat import Heartbeat
from serve_app.runs.leases import Leases
from serve_app.runs.records import Records
from serve_app.runs.recovery import Recovery
from serve_app.runs.retention import Retention
from serve_app.runs.run_pool import PoolLoad, RunPool
from serve_app.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class RunExecutor:
    def __init__(self, redis: Redis, graphs: dict[str, CompiledStateGraph],
                 settings: ApiSettings, replica_id: str, checkpointer: LeanRedisSaver,
                 pool: str | None = None, metrics: Metrics | None = None,
                 retention: Retention | None = None):
        self.redis = redis
        self.metrics = metrics or Metrics()
        self.leases = Leases(redis, settings.lease_ttl_s)
        self.pool = RunPool(redis, pool or settings.run_pool, settings.lease_ttl_s)
        self.context = ExecutorContext(redis, Records(redis), self.leases, self.pool,
                                       self.metrics, replica_id, settings)
        self.checkpointer = checkpointer
        self.retention = retention  # what a thread keeps, applied as each run ends
        self.heartbeat = Heartbeat(sync_client(redis),
                                   self.pool, replica_id, settings.stall_limit_s)
        self._waiting_since: float | None = None  # a free slot waits on an empty queue
        self._slots = Slots(1)
        self.limiter = LagLimiter(self._slots, settings.max_concurrent_runs,
                                  settings.loop_lag_target_ms,
                                  on_change=lambda size: self.metrics.gauge("run_slots", size),
                                  on_measure=self._loop_measured)
        self.limiter.retune(settings.max_concurrent_runs, settings.loop_lag_target_ms,
                            settings.overhead_budget_s)
        self.endings = Endings(self.context, graphs, self.limiter, retention)
        attempts = Attempts(self.context, self.endings)
        self.cancellation = Cancellation(self.context, self.endings, retention)
        self.hand_back = HandBack(attempts, self.cancellation)
        self.recovery = Recovery(self.context, self.endings, attempts, lambda: self.running)
        self.execution = Execution(self.context, graphs, checkpointer, self.heartbeat,
                                   self.endings, attempts, self.cancellation, self.hand_back)
        self._in_slots: set[asyncio.Task] = set()
        self._background: list[asyncio.Task] = []
        self._puller: asyncio.Task | None = None
        self._closing = False

    def start(self, *loops: Coroutine[Any, Any, None]) -> None:
        """Pull runs, listen for cancels and sweep, and run ``loops``, the replica's other
        background work (``serve_app.resources.scheduled``), stopped with these (call inside the
        event loop)."""
        self.heartbeat.start()
        self.metrics.gauge("run_slots", self._slots.size)
        self.metrics.gauge("run_slots_max", self.context.settings.max_concurrent_runs)
        self._puller = asyncio.create_task(self._pull_forever())
        self._background = [asyncio.create_task(self.cancellation.listen_forever()),
                            asyncio.create_task(self.recovery.sweep_forever()),
                            asyncio.create_task(self.limiter.run_forever())]
        if self.retention is not None:
            self._background.append(asyncio.create_task(self.retention.sweep_forever(self)))
        self._background += [asyncio.create_task(loop) for loop in loops]

    def _loop_measured(self, lag_ms: float) -> None:
        """The event loop answered (the limiter measures it every second): the heartbeat's
        sign of life, and a gauge."""
        self.heartbeat.alive()
        self.metrics.gauge("loop_lag_ms", lag_ms)

    @property
    def load(self) -> PoolLoad:
        """The pool's load as of the last sweep."""
        return self.recovery.load

    def live_replicas(self) -> int:
        """The pool's live replicas as of the last sweep (1 before it: this one)."""
        return self.recovery.live_replicas()

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
        return self.cancellation.running

    @property
    def slots(self) -> int:
        """Runs this replica takes at once now (adapted to its loop's lag)."""
        return self._slots.size

    def retune(self, settings: ApiSettings) -> None:
        """New limits (``max_concurrent_runs`` and the rest) for runs taken from now on."""
        self.context.settings = settings
        self.limiter.retune(settings.max_concurrent_runs, settings.loop_lag_target_ms,
                            settings.overhead_budget_s)
        self.metrics.gauge("run_slots_max", settings.max_concurrent_runs)

    def route(self, graph_id: str, pool: str) -> None:
        """``graph_id``'s runs go to ``pool``: the replicas of a deployment of its own."""
        self.context.routes[graph_id] = RunPool(self.redis, pool,
                                                self.context.settings.lease_ttl_s)

    async def submit(self, run: dict[str, Any], first_in_thread: bool) -> None:
        """Queue an admitted run; it is ready at once if its thread has nothing before it."""
        await self.context.pool_of(run["graph_id"]).add(
            run_ref(run["thread_id"], run["run_id"]), ready=first_in_thread,
            not_before_ms=run.get("not_before_ms"))
        self.metrics.count("runs_admitted")

    async def cancel(self, run: dict[str, Any], action: str = "interrupt") -> None:
        """End a run that has not started at once; ask the replica of a running one."""
        await self.cancellation.cancel(run, action)

    async def sweep_once(self, orphans: bool = True) -> list[str]:
        """One sweep (``serve_app.runs.recovery``): the ids of the runs queued again."""
        return await self.recovery.sweep_once(orphans)

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
                elif self._closing:  # taken as the replica closes: back untouched
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
            await self.execution.execute(thread_id, run_id)
        except Exception:  # its lease lapses and the sweeper queues it again
            log.exception("run %s: could not be executed here", run_id)
        finally:
            self.heartbeat.drop(ref, holder)
            self._slots.release()

    async def hand_back_all(self) -> None:
        """Graceful shutdown: take no more runs, give every run of this replica back."""
        self._closing = True
        await self.hand_back.everything(self._in_slots)

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
