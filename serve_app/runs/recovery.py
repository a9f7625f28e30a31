"""Recovering others' runs: any replica's sweep re-queues any run whose owner stopped
renewing its lease (the owner died or stalled: a new attempt, from the run's last
checkpoint) or that nothing holds or queues (taken but never started), settles what a run
that ended left queued, and releases delayed runs whose time has come. The sweeps are paced
like crons and webhooks (``serve_app.runs.pace``): the cluster as a whole sweeps about every
``api.sweep_interval_s``, whatever its size; a sweep also reads the pool's load, which
paces them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from serve_app.keys import parse_ref
from serve_app.runs.attempts import Attempts
from serve_app.runs.endings import Endings
from serve_app.runs.executor_context import ExecutorContext
from serve_app.runs.pace import pause
from serve_app.runs.records import TERMINAL
from serve_app.runs.run_pool import PoolLoad

log = logging.getLogger(__name__)


@dataclass
class Recovery:
    context: ExecutorContext
    endings: Endings
    attempts: Attempts
    running: Callable[[], int]  # the runs running here now, for a gauge
    load: PoolLoad = field(init=False, default_factory=lambda: PoolLoad(0, 0.0, 1))

    def live_replicas(self) -> int:
        """The pool's live replicas as of the last sweep (1 before it: this one)."""
        return self.load.replicas

    async def sweep_forever(self) -> None:
        sweeps = 0
        while True:
            await pause(self.context.settings.sweep_interval_s, self.live_replicas)
            sweeps += 1
            try:
                await self.sweep_once(orphans=sweeps % 5 == 0)
            except Exception:
                log.exception("sweep failed")

    async def sweep_once(self, orphans: bool = True) -> list[str]:
        """Queue again every run whose owner stopped renewing its lease (and, with
        ``orphans``, every pending run nothing holds or queues); returns their ids."""
        context, requeued = self.context, []
        due, expired, self.load = await context.pool.survey()
        await context.pool.release(due)  # delayed runs (after_seconds) whose time has come
        for ref in expired:
            if await context.pool.forfeit(ref) and await self._recover(ref):
                requeued.append(parse_ref(ref)[1])
        if orphans:
            for ref in await context.pool.orphans(context.settings.orphan_grace_s):
                if await self._recover(ref):
                    requeued.append(parse_ref(ref)[1])
        context.metrics.gauge("runs_queued", self.load.queued)
        context.metrics.gauge("runs_running", self.running())
        return requeued

    async def _recover(self, ref: str) -> bool:
        """A run nobody holds: settle it if it ended, else queue it (a new attempt if one
        had started)."""
        context = self.context
        thread_id, run_id = parse_ref(ref)
        run = await context.records.get_run(thread_id, run_id)
        if run is None or run["status"] in TERMINAL:
            await self.endings.settle(ref, run)
            return False
        if run_id not in await context.leases.queued(thread_id) and \
                await context.leases.join(thread_id, run_id, reject=False) != 1:
            return False  # behind another run of its thread: queued when it is next
        if run["status"] == "pending":  # taken but never started: no attempt used
            await context.pool.make_ready(ref)
            return True
        log.warning("run %s lost its owner; queuing attempt %d", run_id, run["attempt"] + 1)
        context.metrics.count("runs_retried", reason="owner_lost")
        return await self.attempts.requeue(run, None)
