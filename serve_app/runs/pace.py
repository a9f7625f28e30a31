"""Pacing of cluster-wide background work (the crons' tick, the webhook outbox's drain, the
sweeps for runs whose owner died and for expired threads).

Any replica may do such work (a lease or claim makes each item happen once), so polling
Redis for it on a fixed timer in every replica makes its cost grow with the replicas for no
benefit (134 replicas would send ~400 polls/s). Instead each replica waits the interval
times the live replicas, jittered so that their polls interleave: the cluster as a whole
polls about once per interval, whatever its size.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

Replicas = Callable[[], int]  # the live replicas now (a memory read, no Redis)
JITTER = (0.5, 1.5)  # a wait is the paced interval times uniform(*JITTER)


def one_replica() -> int:
    """The count where none is known: a replica polls every interval, as if alone."""
    return 1


def wait_s(interval_s: float, replicas: int, jitter: float) -> float:
    """One replica's wait between polls: the cluster-wide ``interval_s`` times the live
    replicas (at least 1: the one asking) times ``jitter`` (drawn from ``JITTER``)."""
    return interval_s * max(replicas, 1) * jitter


async def pause(interval_s: float, replicas: Replicas,
                rng: random.Random | None = None) -> None:
    """Wait until this replica's next poll. The count is re-read every ``interval_s``, so
    a cluster that shrinks does not wait out the bigger cluster's longer wait."""
    jitter = (rng or random).uniform(*JITTER)
    start = time.monotonic()
    while (left := wait_s(interval_s, replicas(), jitter) - (time.monotonic() - start)) > 0:
        await asyncio.sleep(min(left, interval_s))
