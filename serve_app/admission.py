"""Admission control: whether the run pool can take one more run now, and if not, how long
a client should wait before asking again.

A new run is refused while the pool's ready queue is past its depth (``max_queued_runs``
per live replica) or not draining (its oldest run has waited ``max_queue_wait_s``): past
capacity, queuing more only adds waiting, and a refusal in milliseconds beats an answer
too late to use. ``Retry-After`` grows with the share of recent requests refused (1 s when
refusals are rare, 4 s when three in four are, up to 30 s), so clients that wait as asked
retry at a rate the cluster can refuse cheaply instead of a storm that eats the CPU the
admitted runs need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.settings import ApiSettings
from serve_app.metrics import Metrics
from serve_app.run_pool import RunPool

MAX_RETRY_AFTER_S = 30
SMOOTHING = 0.05  # weight of each decision in the refused share (~20 decisions of memory)


@dataclass
class Refusal:
    detail: str
    retry_after_s: int
    reason: str


class Admission:
    def __init__(self, pool: RunPool, metrics: Metrics):
        self.pool = pool
        self.metrics = metrics
        self.refused_share = 0.0

    async def check(self, settings: ApiSettings) -> Refusal | None:
        """None to admit; else why not and when to retry (counted either way)."""
        load = await self.pool.load()
        limit = settings.max_queued_runs * load.replicas
        waited = load.oldest_wait_s
        refused = load.queued >= limit or waited > settings.max_queue_wait_s
        self.refused_share += SMOOTHING * (refused - self.refused_share)
        if not refused:
            return None
        reason = "queue_full" if load.queued >= limit else "queue_wait"
        self.metrics.count("runs_refused", reason=reason)
        backoff = 1 / max(1 - self.refused_share, 1 / MAX_RETRY_AFTER_S)
        retry_after = min(MAX_RETRY_AFTER_S, max(1, math.ceil(waited), round(backoff)))
        return Refusal(f"at capacity: {load.queued} runs queued, the oldest for "
                       f"{waited:.1f} s; retry after {retry_after} s", retry_after, reason)
