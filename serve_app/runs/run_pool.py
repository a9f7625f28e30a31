"""The durable queue a pool of replicas pulls runs from (keys of one hash slot per pool).

- ``ready``: runs at the head of their thread, waiting for a free slot, by enqueue time.
  A replica with a free slot pops the oldest, so admitted work waits here, in Redis, not
  in a replica's memory: a replica that dies loses nothing it had not started.
- ``running``: runs some replica executes, scored by when their lease expires; the
  replica's heartbeat pushes the score forward. An expired score means the owner is gone.
- ``pending``: every non-terminal run, by creation time; the sweeper's view of what must
  end somewhere, so a run dropped between two steps (a crash after its thread queue took
  it, before the ready queue did) is found and queued again.
- ``delayed``: runs asked to start later (``after_seconds``), by when they may; the
  sweeper moves those due to ``ready``, and nothing makes one ready before that. In
  Redis, so a delayed run survives restarts.
- ``replicas``: the pool's live replicas (heartbeat expiry), for admission and autoscaling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from serve_app.keys import (
    delayed_key,
    parse_ref,
    pending_key,
    queue_key,
    ready_key,
    replicas_key,
    running_key,
    started_key,
)
from serve_app.runs.leases import FORFEIT


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class PoolLoad:
    """What admission and autoscaling look at."""

    queued: int  # runs waiting for a slot
    oldest_wait_s: float  # how long the oldest of them has waited
    replicas: int  # live replicas (at least 1: the one asking)
    started: int = 0  # runs taken from the queue, ever (a counter: its rate drains it)


class RunPool:
    def __init__(self, redis: Redis, name: str, lease_ttl_s: float):
        self.redis = redis
        self.name = name
        self.lease_ms = int(lease_ttl_s * 1000)
        self.ready = ready_key(name)
        self.running = running_key(name)
        self.delayed = delayed_key(name)
        self.pending = pending_key(name)
        self.replicas = replicas_key(name)
        self.started = started_key(name)

    async def add(self, ref: str, ready: bool, not_before_ms: int | None = None) -> None:
        """A new run: always pending; ready too if it is its thread's next run, unless
        it may not start before ``not_before_ms`` (then delayed until the sweeper's
        ``release``)."""
        stamp = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.pending, {ref: stamp}, nx=True)
            if not_before_ms is not None and not_before_ms > now_ms():
                pipe.zadd(self.delayed, {ref: not_before_ms})
            elif ready:
                pipe.zadd(self.ready, {ref: stamp}, nx=True)
            await pipe.execute()

    async def make_ready(self, ref: str) -> None:
        """Ready now, unless it is delayed and not due yet (``release`` queues it)."""
        due = await self.redis.zscore(self.delayed, ref)
        if due is None or due <= now_ms():
            await self.redis.zadd(self.ready, {ref: time.time()}, nx=True)

    async def survey(self) -> tuple[list[str], list[str], PoolLoad]:
        """What the sweeper looks at, in one round trip: the delayed runs whose time has
        come, the runs whose owner stopped renewing their lease, and the load."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self.delayed, 0, now_ms())
            pipe.zrangebyscore(self.running, 0, now_ms())
            self._read_load(pipe)
            due, expired, *load = await pipe.execute()
        return ([r.decode() for r in due], [r.decode() for r in expired],
                self._load_from(*load))

    async def release(self, due: list[str]) -> None:
        """Delayed runs whose time has come (``survey``), made ready."""
        for ref in due:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self.ready, {ref: time.time()}, nx=True)
                pipe.zrem(self.delayed, ref)
                await pipe.execute()

    async def take(self, conn: Redis, timeout_s: float) -> str | None:
        """Pop the oldest ready run (blocking on ``conn``, a connection of its own) and
        claim its lease; None if none came within ``timeout_s`` or the run popped is
        already claimed by a live owner (it was queued twice)."""
        popped = await conn.bzpopmin(self.ready, timeout=timeout_s)
        if not popped:
            return None
        ref = popped[1].decode()
        # One owner per run: a run held already, even past its lease, is not taken (the
        # sweeper takes an expired one away first, then queues it again). A pop counts as
        # taken either way.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.running, {ref: now_ms() + self.lease_ms}, nx=True)
            pipe.incr(self.started)
            claimed, _ = await pipe.execute()
        return ref if claimed else None

    async def hand_back(self, ref: str) -> None:
        """Not started, or stopped without an end: some replica takes it again."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.running, ref)
            pipe.zadd(self.ready, {ref: time.time()}, nx=True)
            await pipe.execute()

    async def let_go(self, ref: str) -> None:
        """Stop holding a run without queuing it (it is not its thread's turn, or it is
        another attempt's now)."""
        await self.redis.zrem(self.running, ref)

    async def done(self, ref: str, taken: bool = False) -> None:
        """Off every set. ``taken``: it was popped from ``ready`` and never delayed, so only
        ``running`` and ``pending`` can hold it. Not atomic: a sweeper that sees it half
        removed settles it again, which changes nothing."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self.done_in(pipe, ref, taken)
            await pipe.execute()

    def done_in(self, pipe: Pipeline, ref: str, taken: bool = False) -> None:
        """``done`` as commands of the caller's pipeline."""
        pipe.zrem(self.running, ref)
        pipe.zrem(self.pending, ref)
        if not taken:
            pipe.zrem(self.ready, ref)
            pipe.zrem(self.delayed, ref)

    async def forfeit(self, ref: str) -> bool:
        """Take an expired run away from its owner, if still expired by Redis's clock when
        it runs (``leases.FORFEIT``: a Redis stall held its renewals back); only one
        sweeper wins."""
        return bool(await self.redis.eval(FORFEIT, 1, self.running, ref))

    async def orphans(self, older_than_s: float) -> list[str]:
        """Pending runs older than ``older_than_s`` that are neither ready nor running but
        at the head of their thread (so nothing would ever start them)."""
        old = await self.redis.zrangebyscore(self.pending, 0, time.time() - older_than_s)
        if not old:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for ref in old:
                thread_id, _ = parse_ref(ref)
                pipe.zscore(self.ready, ref)
                pipe.zscore(self.running, ref)
                pipe.zrange(queue_key(thread_id), 0, 0)
            replies = await pipe.execute()
        found = []
        for i, ref in enumerate(old):
            ready, running, head = replies[3 * i:3 * i + 3]
            _, run_id = parse_ref(ref)
            if ready is None and running is None and (not head or head[0].decode() == run_id):
                found.append(ref.decode())
        return found

    async def load(self) -> PoolLoad:
        async with self.redis.pipeline(transaction=False) as pipe:
            self._read_load(pipe)
            return self._load_from(*await pipe.execute())

    def _read_load(self, pipe: Pipeline) -> None:
        pipe.zcard(self.ready)
        pipe.zrange(self.ready, 0, 0, withscores=True)
        pipe.zcount(self.replicas, now_ms(), "+inf")
        pipe.get(self.started)

    @staticmethod
    def _load_from(queued: int, oldest: list, replicas: int, started: bytes | None) -> PoolLoad:
        wait = time.time() - oldest[0][1] if oldest else 0.0
        return PoolLoad(queued, max(wait, 0.0), max(replicas, 1), int(started or 0))
