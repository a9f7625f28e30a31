"""Another attempt at a run, or none. A run whose attempt was stopped by something outside
it (its replica died, Redis failed) goes back to ``pending`` with ``attempt`` + 1 and into
the pool's queue, to continue from its last checkpoint on whichever replica takes it; past
``api.max_attempts`` it ends in error. A run handed back keeps its attempt."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from serve_app.keys import run_ref
from serve_app.runs.endings import Endings, durably
from serve_app.runs.executor_context import ExecutorContext

log = logging.getLogger(__name__)


@dataclass
class Attempts:
    context: ExecutorContext
    endings: Endings

    async def retry(self, run: dict[str, Any], token: str, exc: Exception) -> None:
        """A transient failure of the infrastructure: another attempt, from the last
        checkpoint, on whichever replica takes it."""
        self.context.metrics.count("runs_retried", reason=type(exc).__name__)
        try:
            await self.requeue(run, token)
        except RedisError:  # Redis still down: the lease lapses, the sweeper re-queues it
            log.exception("run %s: could not be queued again", run["run_id"])

    async def requeue(self, run: dict[str, Any], token: str | None,
                      next_attempt: bool = True) -> bool:
        """Back to ``pending`` (``attempt`` + 1 unless a hand-back) and into the queue."""
        context = self.context
        if next_attempt and run["attempt"] >= context.settings.max_attempts:
            await self._give_up(run, token)
            return False
        fields = {"attempt": run["attempt"] + 1} if next_attempt else {"handed_back": True}
        moved = await durably(lambda: context.records.transition_run(
            run, {"running"}, returning=False, status="pending", **fields))
        if token:
            await durably(lambda: context.leases.release(run["thread_id"], token))
        if moved is None:  # ended, or another attempt's now: its pool entry is not ours
            return False
        await durably(lambda: context.pool.hand_back(run_ref(run["thread_id"], run["run_id"])))
        return True

    async def _give_up(self, run: dict[str, Any], token: str | None) -> None:
        error = {"error": "RunAttemptsExhausted",
                 "message": f"the run was tried {run['attempt']} times without finishing: "
                            "its replica died or Redis failed each time "
                            f"(max_attempts={self.context.settings.max_attempts})"}
        if (await self.endings.end(run, "error", error, "error"))[0] is None:
            return
        await self.endings.leave(run, token)
        self.context.metrics.count("runs_finished", status="error")
        events = self.context.event_writer(run)
        events.append("error", error)
        events.append("end", {"run_id": run["run_id"], "status": "error"})
        with contextlib.suppress(RedisError):
            await events.flush()
