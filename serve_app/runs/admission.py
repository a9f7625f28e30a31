"""Admission control: whether the run pool can take one more run now, and if not, how long
a client should wait before asking again.

A new run waits behind every run queued before it, and the queue drains at the rate the
pool's replicas take runs (measured: the pool's ``started`` counter over time). So a run
is refused when the wait it would face (queued / drain rate) exceeds ``max_queue_wait_s``
while the queue is really waiting (its oldest run has waited a quarter of that, or two
runs are ahead and every slot of this replica is in use: the drain rate only measures
capacity when runs wait for slots; on a quiet cluster it is the arrival rate, and a run
that free slots take at once must not be refused by it), when the queue's oldest run has
already waited that long (not draining at all), or past the hard cap of
``max_queued_runs`` per live replica. Past capacity, queuing more only adds waiting: a
refusal in milliseconds beats an answer too late to use, and the runs admitted keep their
latency.

A replica with a free slot that has waited on the pool's ready queue for longer than a
round trip (``IDLE_S``) knows that queue is empty: it admits without reading the load (the
cluster below capacity, its usual state, spends no Redis command on admission).
Otherwise decisions share reads of the pool's load: one read at most every ``LOAD_MAX_AGE_S`` per
replica (one in flight at a time), so a storm of requests costs a decision in memory
instead of a Redis round trip each (the runs this replica admitted since the read count as
queued: a read that saw an empty queue must not let the next 50 ms of a storm in, a
burst that then waits for slots, measured: admitted runs queued 0.5 s at p95 where 0.1 s
was the limit).

A run that resumes an interrupted thread (an approval, hours later) finishes a turn already
under way: it is refused only past the hard cap, never for the queue's wait, so a human's
decision is not bounced for minutes by a storm of new turns.

While the model endpoint's circuit breaker is open (``agents.breaker``: the provider failing,
or asking for a pause with ``Retry-After``) new runs are refused with the time it reopens,
not admitted to fail one model call at a time minutes later (resumes wait in flight).

``Retry-After`` grows with the share of recent requests refused (1 s when refusals are
rare, 4 s when three in four are, up to 30 s), so clients that wait as asked retry at a
rate the cluster can refuse cheaply instead of a storm that eats the CPU the admitted runs
need.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from agents import breaker
from agents.settings import ApiSettings
from serve_app.runs.run_pool import PoolLoad, RunPool
from serve_app.telemetry.metrics import Metrics

MAX_RETRY_AFTER_S = 30
SMOOTHING = 0.05  # weight of each decision in the refused share (~20 decisions of memory)
RATE_WINDOW_S = 1.0  # the drain rate is re-measured at most this often (then averaged)
SHARE_HALF_LIFE_S = 10.0  # with no requests, the refused share halves this often
LOAD_MAX_AGE_S = 0.05  # decisions reuse a read of the pool's load this young
IDLE_S = 0.05  # a free slot waiting this long on the ready queue: the queue is empty


@dataclass
class Refusal:
    detail: str
    retry_after_s: int
    reason: str


class DrainRate:
    """Runs per second the pool takes from its queue, from its ``started`` counter."""

    def __init__(self) -> None:
        self.per_s = 0.0
        self._last: tuple[float, int] | None = None

    def update(self, started: int, now: float) -> float:
        if self._last is None or started < self._last[1]:  # first sample, or a reset
            self._last = (now, started)
        elif now - self._last[0] >= RATE_WINDOW_S:
            then, before = self._last
            latest = (started - before) / (now - then)
            self.per_s = latest if self.per_s == 0 else (self.per_s + latest) / 2
            self._last = (now, started)
        return self.per_s


class Admission:
    def __init__(self, pool: RunPool, metrics: Metrics,
                 idle_for: Callable[[], float] = lambda: 0.0,
                 slots_full: Callable[[], bool] = lambda: False):
        self.pool = pool
        self.metrics = metrics
        self.idle_for = idle_for  # how long a free slot here has waited for a run
        self.slots_full = slots_full  # every slot here is running a run
        self._admitted_since_read = 0
        self._share = 0.0
        self._decided_at = time.monotonic()
        self.drain = DrainRate()
        self._read: asyncio.Future[PoolLoad] | None = None
        self._read_at = 0.0

    @property
    def refused_share(self) -> float:
        """The share of recent requests refused (fades while none arrive): offered load is
        about served load / (1 - share), which autoscaling reads."""
        idle = time.monotonic() - self._decided_at
        return self._share * 0.5 ** (idle / SHARE_HALF_LIFE_S)

    async def check(self, settings: ApiSettings, resume: bool = False) -> Refusal | None:
        """None to admit; else why not and when to retry (counted either way). ``resume``:
        the run resumes an interrupted thread."""
        circuit = None if resume else await breaker.open_circuit()
        if circuit is not None:
            self.metrics.count("runs_refused", reason="model_unavailable")
            wait = max(1, math.ceil(circuit.known.open_for()))
            return Refusal(f"the model endpoint {circuit.endpoint} is failing "
                           f"({circuit.known.cause}): its circuit breaker is open; retry "
                           f"after {wait} s", wait, "model_unavailable")
        if self.idle_for() > IDLE_S:
            self._decided(refused=False)
            return None
        load = await self._load()
        drain = self.drain.update(load.started, time.monotonic())
        ahead = replace(load, queued=load.queued + self._admitted_since_read)
        reason = self.reason(ahead, settings, drain, resume, self.slots_full())
        self._decided(refused=reason is not None)
        if reason is None:
            self._admitted_since_read += 1
            return None
        self.metrics.count("runs_refused", reason=reason)
        backoff = 1 / max(1 - self.refused_share, 1 / MAX_RETRY_AFTER_S)
        retry_after = min(MAX_RETRY_AFTER_S,
                          max(1, math.ceil(load.oldest_wait_s), round(backoff)))
        return Refusal(f"at capacity: {load.queued} runs queued, the oldest for "
                       f"{load.oldest_wait_s:.1f} s; retry after {retry_after} s",
                       retry_after, reason)

    def _decided(self, refused: bool) -> None:
        self._share = self.refused_share + SMOOTHING * (refused - self.refused_share)
        self._decided_at = time.monotonic()

    async def _load(self) -> PoolLoad:
        """The pool's load as of a read at most ``LOAD_MAX_AGE_S`` old (the one in flight,
        if any)."""
        read = self._read
        if read is None or read.get_loop() is not asyncio.get_running_loop() or \
                (read.done() and time.monotonic() - self._read_at > LOAD_MAX_AGE_S):
            self._read_at = time.monotonic()
            self._admitted_since_read = 0
            self._read = asyncio.ensure_future(self.pool.load())
        return await asyncio.shield(self._read)

    @staticmethod
    def reason(load: PoolLoad, settings: ApiSettings, drain_per_s: float,
               resume: bool = False, slots_full: bool = False) -> str | None:
        """``load.queued``: the runs a new one would wait behind; ``slots_full``: every
        slot of this replica is in use."""
        if load.queued >= settings.max_queued_runs * load.replicas:
            return "queue_full"
        if resume:
            return None
        if load.oldest_wait_s > settings.max_queue_wait_s:
            return "queue_wait"
        # two ahead with no slot free here: a burst (below capacity the slots track the
        # runs in use, so one arrival often finds them full, about to free or grow)
        waiting = load.oldest_wait_s >= settings.max_queue_wait_s / 4 or \
            (slots_full and load.queued >= 2)
        if load.queued and waiting and drain_per_s > 0 and \
                (load.queued + 1) / drain_per_s > settings.max_queue_wait_s:
            return "expected_wait"
        return None
