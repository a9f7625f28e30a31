"""A replica's run slots follow what its event loop can serve in time; admission bounds
the wait of the runs it lets in."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import redis

from agents.settings import ApiSettings
from serve_app.deployments.autoscaling import runs_policy
from serve_app.runs.admission import Admission, DrainRate
from serve_app.runs.concurrency import LagLimiter, Slots
from serve_app.runs.executor import RunExecutor
from serve_app.runs.run_pool import PoolLoad, RunPool
from serve_app.telemetry.metrics import Metrics


def limiter(size: int, used: int, ceiling: int = 16) -> LagLimiter:
    slots = Slots(size)
    slots.used = used
    return LagLimiter(slots, ceiling=ceiling, target_ms=20)


def test_a_lagging_loop_takes_fewer_runs_a_prompt_full_one_more():
    lagging = limiter(size=8, used=8)
    lagging.adjust(lag_ms=45)
    assert lagging.slots.size == 6
    for _ in range(10):
        lagging.adjust(lag_ms=300)
    assert lagging.slots.size == 1  # never below one

    prompt = limiter(size=8, used=8, ceiling=9)
    prompt.adjust(lag_ms=2)
    prompt.adjust(lag_ms=2)
    assert prompt.slots.size == 9  # one at a time, up to the ceiling

    idle = limiter(size=8, used=3)
    idle.adjust(lag_ms=2)  # slots not all in use: no evidence more would be served
    assert idle.slots.size == 8


async def test_lag_is_measured_from_the_loop_itself():
    # idle: lateness only, not the 100 ms asked for (a busy box's few ms of noise allowed)
    ticks = LagLimiter(Slots(1), ceiling=4, target_ms=20, tick_s=0.1, window_s=0.3)
    assert await ticks.measure() < 50
    meter = LagLimiter(Slots(1), ceiling=4, target_ms=20, tick_s=0.01, window_s=0.3)

    async def hog() -> None:  # CPU-bound work holding the loop 30 ms at a time
        while True:
            time.sleep(0.03)
            await asyncio.sleep(0)

    task = asyncio.create_task(hog())
    try:
        assert await meter.measure() > 15
    finally:
        task.cancel()


async def test_resizing_wakes_a_waiting_taker():
    slots = Slots(1)
    await slots.acquire()
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    slots.resize(2)
    await asyncio.wait_for(waiting, 1)
    assert slots.used == 2


def test_new_bounds_start_again_from_half_the_ceiling():
    tuned = limiter(size=1, used=1, ceiling=1)
    tuned.retune(ceiling=16, target_ms=20, overhead_budget_s=0.5)
    assert tuned.slots.size == 8
    tuned.retune(ceiling=1, target_ms=20, overhead_budget_s=0.5)
    assert tuned.slots.size == 1


def test_runs_slowed_downstream_make_the_replica_take_fewer():
    """The loop is prompt but runs wait on something saturated behind it (a specialist
    deployment): their overhead above the lowest seen lately shrinks the slots."""
    watched = limiter(size=8, used=8)
    for overhead in (0.10, 0.12, 0.11, 0.10, 0.13):  # unloaded: the baseline
        watched.run_ended(overhead)
    watched.adjust(lag_ms=2, excess_s=watched.excess_overhead())
    assert watched.slots.size == 9

    for overhead in (0.9, 1.4, 1.1, 1.6, 1.3) * 2:  # the same runs, now queued downstream
        watched.run_ended(overhead)
    excess = watched.excess_overhead()
    assert excess > 0.5
    watched.adjust(lag_ms=2, excess_s=excess)
    assert watched.slots.size == 6 and not watched.overheads  # judged afresh


def test_the_baseline_overhead_ages_slowly_while_every_slot_is_in_use():
    """A lucky low is forgotten within minutes at normal load; under a sustained overload
    (every slot in use) it holds much longer, so admitted runs' latency does not drift up
    with it."""
    for used, aged in ((8, False), (5, True)):  # 5: some slots free
        watched = limiter(size=8, used=used)
        for overhead in (0.2, 0.2, 0.2, 0.2):
            watched.run_ended(overhead)
        watched.excess_overhead()
        for _ in range(300):  # five minutes of one-second windows
            watched.run_ended(0.3)
            excess = watched.excess_overhead()
        assert excess == 0.0 if aged else excess > 0.05  # aged: up to the typical


def test_admission_bounds_the_wait_a_new_run_would_face():
    api = ApiSettings(max_queued_runs=32, max_queue_wait_s=0.5)

    def load(queued: int, oldest_wait_s: float = 0.2) -> PoolLoad:
        return PoolLoad(queued=queued, oldest_wait_s=oldest_wait_s, replicas=2)

    assert Admission.reason(load(0), api, drain_per_s=4.0) is None
    assert Admission.reason(load(1), api, drain_per_s=4.0) is None  # 2 / 4 = 0.5 s
    assert Admission.reason(load(2), api, drain_per_s=4.0) == "expected_wait"
    assert Admission.reason(load(2), api, drain_per_s=0.0) is None  # not measured yet
    # runs taken at once by free slots: a low rate is the arrivals, not the capacity
    assert Admission.reason(load(2, oldest_wait_s=0.01), api, drain_per_s=0.1) is None
    # ...unless two are ahead and no slot here is free: a burst waits, however fresh
    assert Admission.reason(load(2, oldest_wait_s=0.01), api, drain_per_s=4.0,
                            slots_full=True) == "expected_wait"
    assert Admission.reason(load(1, oldest_wait_s=0.01), api, drain_per_s=2.0,
                            slots_full=True) is None
    assert Admission.reason(load(1, oldest_wait_s=0.8), api, 40.0) == "queue_wait"
    assert Admission.reason(load(64), api, drain_per_s=1000.0) == "queue_full"
    # a resume (an approval) finishes a turn under way: only the hard cap refuses it
    assert Admission.reason(load(1, oldest_wait_s=0.8), api, 40.0, resume=True) is None
    assert Admission.reason(load(2), api, drain_per_s=4.0, resume=True) is None
    assert Admission.reason(load(64), api, drain_per_s=1000.0, resume=True) == "queue_full"


@pytest.mark.parametrize("idle_s", [0.0, 1.0])
async def test_concurrent_decisions_share_one_read_of_the_pool(redis_client, redis_url,
                                                               idle_s):
    """A storm of requests costs one read of the pool's load (the one in flight), not a
    Redis round trip each: Redis sees one read of the queue for twenty decisions; none
    while a free slot of the replica has been waiting on the (so empty) ready queue."""
    pool = RunPool(redis_client, f"pool-{uuid.uuid4().hex[:8]}", lease_ttl_s=3)
    admission = Admission(pool, Metrics(), idle_for=lambda: idle_s)
    marker = f"done-{uuid.uuid4().hex[:8]}"
    reads, listening = [], threading.Event()

    def watch() -> None:
        with redis.Redis.from_url(redis_url).monitor() as monitor:
            listening.set()
            for command in monitor.listen():
                if marker in command["command"]:
                    return
                if pool.ready in command["command"] and "ZCARD" in command["command"]:
                    reads.append(command["command"])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    listening.wait(10)
    await asyncio.sleep(0.2)  # the MONITOR connection is registered
    decisions = await asyncio.gather(*(admission.check(ApiSettings()) for _ in range(20)))
    await redis_client.echo(marker)
    await asyncio.to_thread(watcher.join, 10)
    assert decisions == [None] * 20
    assert len(reads) == (0 if idle_s else 1), reads


@pytest.mark.parametrize("full", [True, False])
async def test_runs_admitted_since_the_last_read_count_as_queued(redis_client, full):
    """A read that saw the queue empty does not let a whole storm in to wait for slots
    (measured: admitted runs queued 0.5 s at p95 with a 0.1 s limit): the runs admitted
    since it count as queued. While this replica has a free slot, they are taken at once."""
    pool = RunPool(redis_client, f"pool-{uuid.uuid4().hex[:8]}", lease_ttl_s=3)
    admission = Admission(pool, Metrics(), slots_full=lambda: full)
    admission.drain.per_s = 10.0  # runs/s the pool takes from its queue, as measured
    api = ApiSettings(max_queue_wait_s=0.1)
    decisions = await asyncio.gather(*(admission.check(api) for _ in range(20)))
    assert sum(d is None for d in decisions) == (2 if full else 20)  # (2 + 1) / 10 > 0.1 s
    assert {d.reason for d in decisions if d is not None} <= {"expected_wait"}


async def soon(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """``check()``, polled until true or ``timeout_s`` is over (no timing asserted)."""
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return check()


async def test_a_puller_waiting_for_a_slot_is_not_an_idle_slot(redis_client):
    """Admission lets runs in unchecked while a free slot has waited on the empty queue
    (``idle_for``). A puller whose wait timed out and then finds every slot taken (runs in
    them, or the limiter shrank them) waits for a slot, not for runs: its replica must not
    keep admitting as if idle (measured: such runs queued 1.3-1.8 s)."""
    executor = RunExecutor(redis_client, {}, ApiSettings(), "replica-1", checkpointer=None,
                           pool=f"pool-{uuid.uuid4().hex[:8]}")
    executor.limiter.retune(1, 20, 0.1)  # one slot, taken by the puller while it waits
    puller = asyncio.create_task(executor._pull_forever())
    try:
        assert await soon(lambda: executor.idle_for() > 0.1) and not executor.slots_full()
        executor._slots.used += 1  # a run takes the slot while the puller's wait runs out
        # (its wait on the queue times out after 1 s)
        assert await soon(lambda: executor.idle_for() == 0.0 and executor.slots_full())
        executor._slots.release()  # the run ends: the puller waits on the queue again
        assert await soon(lambda: executor.idle_for() > 0.1)
    finally:
        executor._closing = True
        puller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await puller


def test_the_drain_rate_is_measured_from_the_started_counter():
    rate = DrainRate()
    assert rate.update(100, now=0.0) == 0.0
    assert rate.update(104, now=0.5) == 0.0  # under a window: not yet
    assert rate.update(108, now=2.0) == 4.0
    assert rate.update(116, now=3.0) == 6.0  # averaged with the last


def test_autoscaling_asks_for_the_load_offered_not_only_the_load_admitted():
    def ctx(refused: float, queued: float = 0.0) -> SimpleNamespace:
        per_replica = {"a": 1.0, "b": 1.0}
        return SimpleNamespace(current_num_replicas=2, aggregated_metrics={
            "runs_running": per_replica, "runs_queued": {"a": queued, "b": queued},
            "run_slots": per_replica, "refused_share": {"a": refused, "b": refused}})

    assert runs_policy(ctx(refused=0.0))[0] == 2
    assert runs_policy(ctx(refused=0.05))[0] == 2  # a refusal now and then is no reason
    assert runs_policy(ctx(refused=0.75))[0] == 8  # 4x offered: 4x the replicas
    assert runs_policy(ctx(refused=0.0, queued=4))[0] == 6  # a backlog in slots
