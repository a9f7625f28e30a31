"""Cancelling a run. One not started yet ends at once (``interrupted``; with ``rollback``,
as if it had never been made). A running one is asked for on the pool's cancel channel
(Redis pub/sub), and the replica running it cancels its task, which ends it as asked: a
cancel that comes while the run is being marked running (the API saw it running already)
is kept and acted on once the run can end cleanly. The same cancel, with ``hand_back`` as
its action, gives a replica's runs back on shutdown (``serve_app.runs.hand_back``)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from serve_app.keys import cancel_channel
from serve_app.runs.endings import Endings
from serve_app.runs.executor_context import ExecutorContext
from serve_app.runs.retention import Retention

log = logging.getLogger(__name__)


@dataclass
class Cancellation:
    context: ExecutorContext
    endings: Endings
    retention: Retention | None
    # run id -> its task (once it holds the lease), the runs being marked running, and
    # run id -> the cancel asked of this replica for it
    _tasks: dict[str, asyncio.Task] = field(init=False, default_factory=dict)
    _starting: set[str] = field(init=False, default_factory=set)
    _actions: dict[str, str] = field(init=False, default_factory=dict)

    async def cancel(self, run: dict[str, Any], action: str = "interrupt") -> None:
        """End a run that has not started at once; ask the replica of a running one."""
        context = self.context
        ended = await context.records.transition_run(run, {"pending"}, returning=False,
                                                     status="interrupted")
        if ended is not None:
            await self.endings.leave(run, None)
            events = context.event_writer(run)
            events.append("end", {"run_id": run["run_id"], "status": "interrupted"})
            await events.flush()
            if action == "rollback":
                if self.retention is not None:
                    await self.retention.roll_back_safely(run)
                await context.records.delete_run(run)
            return
        await context.redis.publish(cancel_channel(context.pool_of(run.get("graph_id")).name),
                                    json.dumps({"run_id": run["run_id"], "action": action}))

    async def listen_forever(self) -> None:
        """Act on the cancels asked of this pool for the runs running here."""
        while True:
            try:
                pubsub = self.context.redis.pubsub()
                await pubsub.subscribe(cancel_channel(self.context.pool.name))
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        request = json.loads(message["data"])
                        if request["run_id"] in self._tasks:
                            self._cancel(request["run_id"], request.get("action", "interrupt"))
            except RedisError as exc:  # Redis restarting: subscribe again
                log.warning("cancel listener: %s; subscribing again", type(exc).__name__)
                await asyncio.sleep(0.5)

    def cancel_all(self, action: str) -> None:
        """Cancel every run running here, with ``action``."""
        for run_id in list(self._tasks):
            self._cancel(run_id, action)

    def _cancel(self, run_id: str, action: str) -> None:
        self._actions[run_id] = action
        if run_id not in self._starting:
            self._tasks[run_id].cancel()

    # the runs of this replica, as their execution goes
    @property
    def running(self) -> int:
        return len(self._tasks)

    def starting(self, run_id: str, task: asyncio.Task) -> None:
        """``task`` holds the run's lease and marks it running: cancels are kept."""
        self._tasks[run_id] = task
        self._starting.add(run_id)

    def started(self, run_id: str, running: bool) -> None:
        """Marked running (a kept cancel is ``asked``), or not (nothing left to cancel)."""
        self._starting.discard(run_id)
        if not running:
            del self._tasks[run_id]
            self._actions.pop(run_id, None)

    def asked(self, run_id: str) -> bool:
        """A cancel was asked for the run (kept while it was being started)."""
        return run_id in self._actions

    def action(self, run_id: str) -> str:
        """What the cancel of a run whose task was cancelled asked (``interrupt`` if none
        did: the task was cancelled otherwise)."""
        return self._actions.pop(run_id, "interrupt")

    def ended(self, run_id: str, task: asyncio.Task) -> None:
        """``task`` ran the run: nothing left to cancel (unless another attempt of the
        same run runs here now)."""
        if self._tasks.get(run_id) is task:
            del self._tasks[run_id]
