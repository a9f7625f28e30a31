"""Handing back on shutdown: a replica that stops gives each of its runs back to the pool,
to continue as the same attempt, from its last checkpoint, on another replica (a dead
replica's runs wait for their leases to lapse and start a new attempt instead:
``serve_app.runs.recovery``). Each run is cancelled with ``HAND_BACK`` and hands itself
back as it stops."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from serve_app.runs.attempts import Attempts
from serve_app.runs.cancellation import Cancellation

HAND_BACK = "hand_back"


@dataclass
class HandBack:
    attempts: Attempts
    cancellation: Cancellation

    async def everything(self, running: Iterable[asyncio.Task]) -> None:
        """Ask every run of this replica to hand itself back; wait for ``running``, the
        tasks that run them, to stop."""
        self.cancellation.cancel_all(HAND_BACK)
        await asyncio.gather(*running, return_exceptions=True)

    async def run(self, run: dict[str, Any], token: str) -> None:
        """The run stopped here: the same attempt continues on another replica."""
        await self.attempts.requeue(run, token, next_attempt=False)
