"""How the lost turn of issue #9 happened, each step reproduced, and that it cannot now.

Under overload, a run's replica had a busy event loop, its lease heartbeat (a task of that
loop) missed renewals, the sweeper re-queued the healthy run, record writes raced (GET then
SET), a write failure dropped the run's terminal event, and its client's stream ended with
neither the answer nor an error. The client sent its next turn, which failed unseen."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
import redis

from agents.keys import checkpoints_key
from agents.settings import Settings
from agents.system import AgentSystem
from serve_app.keys import queue_key, run_ref, thread_lease_key
from serve_app.resources.api_errors import ApiError
from serve_app.resources.schemas import RunCreate
from serve_app.resources.service import AgentService
from serve_app.runs.heartbeat import Heartbeat
from serve_app.runs.leases import THREAD_LEASE_FACTOR
from serve_app.runs.records import ACTIVE, Records
from serve_app.runs.run_pool import RunPool


@pytest.fixture
async def make_service(settings: Settings):
    """Services over in-process graphs, each with its own run pool; closed afterwards."""
    made: list[tuple[AgentSystem, AgentService]] = []

    async def make(**api: object) -> AgentService:
        tuned = settings.model_copy(update={"api": settings.api.model_copy(update=api)})
        system = await AgentSystem.create(tuned)
        service = AgentService.in_process(system, replica_id=f"r-{uuid.uuid4().hex[:6]}")
        service.executor.start()
        made.append((system, service))
        return service

    yield make
    for system, service in made:
        await service.aclose()
        await system.aclose()


def user(text: str) -> RunCreate:
    return RunCreate.model_validate({
        "assistant_id": "supervisor", "stream_mode": ["values"],
        "input": {"messages": [{"role": "user", "content": text}]}})


class ExpiryWatch:
    """From another thread (the service's loop is blocked on purpose): did the run's
    lease ever look expired to a sweeper?"""

    def __init__(self, url: str, service: AgentService, run: dict):
        self.client = redis.Redis.from_url(url)
        self.pool = service.executor.pool
        self.ref = run_ref(run["thread_id"], run["run_id"]).encode()
        self.expired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ExpiryWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            now_ms = int(time.time() * 1000)
            if self.ref in self.client.zrangebyscore(self.pool.running, 0, now_ms):
                self.expired = True


async def running(service: AgentService, run: dict) -> dict:
    for _ in range(400):
        record = await service.records.get_run(run["thread_id"], run["run_id"])
        if record["status"] == "running":
            return record
        await asyncio.sleep(0.025)
    raise AssertionError("the run never started")


async def test_a_busy_event_loop_keeps_its_leases(make_service, settings, stub_admin):
    service = await make_service(lease_ttl_s=1.0)
    thread, _ = await service.records.create_thread(None, {})
    stub_admin.post("/config", json={"ttft_ms": 400})
    run = await service.runs.create(thread["thread_id"], user("What is Redis persistence?"))
    await running(service, run)
    with ExpiryWatch(settings.redis_url, service, run) as watch:
        time.sleep(3.5)  # the loop runs nothing for 3.5 leases: CPU-bound work, as overloaded
        assert await service.executor.sweep_once() == []
    ended = await asyncio.wait_for(
        service.streams.wait_for_end(thread["thread_id"], run["run_id"]), 30)

    assert not watch.expired
    assert ended["status"] == "success" and ended["attempt"] == 1
    state = await service.threads.get_state(thread["thread_id"])
    humans = [m for m in state["values"]["messages"]
              if m["type"] == "human"]
    assert [m["content"] for m in humans] == ["What is Redis persistence?"]


async def test_a_loop_silent_past_the_stall_limit_gives_its_runs_up(make_service, settings,
                                                                   stub_admin):
    service = await make_service(lease_ttl_s=1.0, stall_limit_s=1.5)
    thread, _ = await service.records.create_thread(None, {})
    stub_admin.post("/config", json={"ttft_ms": 400})
    run = await service.runs.create(thread["thread_id"], user("What is Redis persistence?"))
    await running(service, run)
    with ExpiryWatch(settings.redis_url, service, run) as watch:
        time.sleep(4.0)  # wedged past the stall limit: another replica must be able to take over
    assert watch.expired
    ended = await asyncio.wait_for(
        service.streams.wait_for_end(thread["thread_id"], run["run_id"]), 30)
    assert ended["status"] == "success"  # re-queued by its own sweeper, continued, not lost
    state = await service.threads.get_state(thread["thread_id"])
    humans = [m for m in state["values"]["messages"]
              if m["type"] == "human"]
    assert len(humans) == 1


async def test_a_requeue_cannot_overwrite_the_end_its_first_attempt_wrote(redis_client):
    records = Records(redis_client)
    thread_id = f"cas-{uuid.uuid4().hex[:8]}"
    run, _, _ = await records.create_run(thread_id, "a", "supervisor", {}, {}, "enqueue")
    started = await records.transition_run(run, {"pending"}, status="running")
    seen_by_sweeper = dict(started)  # read just before the first attempt finished

    assert await records.transition_run(started, ACTIVE, status="success") is not None
    requeued = await records.transition_run(seen_by_sweeper, {"running"}, status="pending",
                                            attempt=2)
    assert requeued is None
    stored = await records.get_run(thread_id, run["run_id"])
    assert stored["status"] == "success" and stored["attempt"] == 1


async def test_a_stale_attempt_cannot_end_a_run_its_successor_owns(redis_client):
    records = Records(redis_client)
    thread_id = f"cas-{uuid.uuid4().hex[:8]}"
    run, _, _ = await records.create_run(thread_id, "a", "supervisor", {}, {}, "enqueue")
    first = await records.transition_run(run, {"pending"}, status="running")
    second = await records.transition_run(first, {"running"}, status="pending", attempt=2)
    second = await records.transition_run(second, {"pending"}, status="running")

    assert await records.transition_run(first, ACTIVE, status="error") is None
    assert await records.transition_run(second, ACTIVE, status="success") is not None
    assert (await records.get_run(thread_id, run["run_id"]))["status"] == "success"


async def test_a_stream_whose_end_was_never_written_ends_with_the_outcome(make_service):
    """The run ended (its record says so) but its terminal events never reached the
    stream: the stream tells the outcome from the record instead of closing silently."""
    service = await make_service(heartbeat_s=0.2)
    thread, _ = await service.records.create_thread(None, {})
    run, _, _ = await service.records.create_run(thread["thread_id"], "a", "supervisor", {},
                                                 {}, "enqueue")
    error = {"error": "ConnectionError", "message": "No connection available."}
    await service.records.transition_run(run, ACTIVE, status="error", error=error)

    frames = b"".join([f async for f in service.streams.events(thread["thread_id"],
                                                              run["run_id"])]).decode()
    assert "event: error" in frames and "No connection available." in frames
    assert frames.rstrip().splitlines()[-2] == "event: end"


async def test_a_run_waiting_behind_another_uses_no_slot_and_no_attempt(make_service,
                                                                       stub_admin):
    """Queued runs used to be re-dispatched (attempt + 1) every few seconds until they ran
    out of attempts: waiting is not failing."""
    service = await make_service(max_concurrent_runs=1, lease_ttl_s=1.0)
    stub_admin.post("/config", json={"ttft_ms": 300})
    threads = [(await service.records.create_thread(None, {}))[0] for _ in range(4)]
    runs = [await service.runs.create(t["thread_id"], user("What is Redis persistence?"))
            for t in threads]
    ended = [await asyncio.wait_for(service.streams.wait_for_end(r["thread_id"], r["run_id"]), 60)
             for r in runs]
    assert [(e["status"], e["attempt"]) for e in ended] == [("success", 1)] * 4


async def test_refusals_store_nothing_and_ask_for_longer_waits_as_they_mount(make_service):
    """Past capacity (here: no queue at all) a run is refused before anything is stored,
    and Retry-After grows with the share refused, so waiting clients do not storm."""
    service = await make_service(max_queued_runs=0)
    thread, _ = await service.records.create_thread(None, {})
    waits = []
    for _ in range(40):
        with pytest.raises(ApiError) as refused:
            await service.runs.create(thread["thread_id"], user("What is Redis persistence?"))
        assert refused.value.status == 503 and "at capacity" in refused.value.detail
        waits.append(int(refused.value.headers["Retry-After"]))

    assert waits[0] == 1 and waits == sorted(waits) and 5 <= waits[-1] <= 30
    assert await service.records.list_runs(thread["thread_id"]) == []
    assert (await service.threads.get_state(thread["thread_id"]))["values"] == {}
    assert service.metrics.total("runs_refused") == 40


async def test_a_run_is_claimed_in_one_round_trip_even_after_redis_lost_its_scripts(
        make_service):
    """Taking a run reads its record, takes its thread's lease and reads where the thread
    stands in one pipeline; a Redis that lost its script cache (a restart, a failover)
    answers that pipeline with NOSCRIPT, and the claim still succeeds, once."""
    service = await make_service()
    executor = service.executor
    thread, _ = await service.records.create_thread(None, {})
    thread_id = thread["thread_id"]
    run, _, _ = await service.records.create_run(thread_id, "a", "supervisor", {}, {},
                                                 "enqueue")  # queued on its thread
    await service.redis.script_flush()
    record, token, latest = await executor.execution.claim(thread_id, run["run_id"])
    assert record["run_id"] == run["run_id"] and token and latest is None
    # the same run again (a second attempt): its own lease, a new token; a run behind it
    # gets none
    again = (await executor.execution.claim(thread_id, run["run_id"]))[1]
    assert again and again != token
    behind, _, _ = await service.records.create_run(thread_id, "b", "supervisor", {}, {},
                                                    "enqueue")
    assert (await executor.execution.claim(thread_id, behind["run_id"]))[1] is None


def test_a_beat_renews_every_lease_in_one_pipeline_even_after_redis_lost_its_scripts(
        redis_url):
    """The heartbeat's renewals are EVALSHA inside its pipeline; NOSCRIPT (a restart, a
    failover) gets each loaded and run again, so no lease lapses for it. A lease another
    run took meanwhile is not renewed."""
    client = redis.Redis.from_url(redis_url)
    pool = RunPool(client, f"pool-{uuid.uuid4().hex[:8]}", lease_ttl_s=3)
    beat = Heartbeat(client, pool, "r-beat", stall_limit_s=30)
    mine, theirs = (f"ac:{{hb-{uuid.uuid4().hex[:8]}}}:active" for _ in range(2))
    client.set(mine, "run-a:1", px=500)
    client.set(theirs, "run-c:7", px=500)
    beat.hold("run-a:t", object(), mine, "run-a:1")
    beat.hold("run-b:t", object(), theirs, "run-b:3")  # its lease is someone else's now
    client.script_flush()
    beat.beat()
    # renewed: past the 500 ms it had (with seconds to spare for a slow box), within the
    # thread lease (its TTL outlives a Redis stall: serve_app/runs/leases.py)
    assert 1000 < client.pttl(mine) <= 3000 * THREAD_LEASE_FACTOR
    assert client.pttl(theirs) <= 500
    client.pexpire(mine, 500)
    beat.beat()  # the script is loaded again now
    assert 1000 < client.pttl(mine) <= 3000 * THREAD_LEASE_FACTOR
    client.close()


async def test_a_run_leaves_its_thread_and_the_pool_even_after_redis_lost_its_scripts(
        make_service):
    """A run's end prunes its thread (writes made while it still holds it), frees its
    thread and leaves the pool in one pipeline; NOSCRIPT (a restart, a failover) gets the
    leave script loaded and run, and nothing is left behind. A run whose thread another
    attempt holds frees nothing."""
    service = await make_service()
    executor, pool = service.executor, service.executor.pool
    thread, _ = await service.records.create_thread(None, {})
    thread_id = thread["thread_id"]
    run, _, _ = await service.records.create_run(thread_id, "a", "supervisor", {}, {},
                                                 "enqueue")
    ref = run_ref(thread_id, run["run_id"])
    _, token, _ = await executor.execution.claim(thread_id, run["run_id"])
    await executor.endings.leave(run, "someone-else:9")  # a stale attempt
    assert await service.redis.get(thread_lease_key(thread_id)) == token.encode()

    await pool.add(ref, ready=False)
    await service.redis.zadd(pool.running, {ref: time.time() * 1000 + 60_000})
    await service.redis.hset(checkpoints_key(thread_id), "old", "x")
    await service.redis.script_flush()
    await executor.endings.leave(run, token, [("HDEL", checkpoints_key(thread_id), "old")])
    assert await service.redis.get(thread_lease_key(thread_id)) is None
    assert await service.redis.zrange(queue_key(thread_id), 0, -1) == []
    assert await service.redis.hexists(checkpoints_key(thread_id), "old") == 0
    for members in (pool.running, pool.pending, pool.ready):
        assert await service.redis.zscore(members, ref) is None


async def test_a_run_ends_and_its_thread_is_read_for_retention_in_one_pipeline(make_service):
    """The run's terminal record and retention's read of its thread go in one pipeline
    (the read after the write); NOSCRIPT (a restart, a failover) gets the end script loaded
    and run, once. A stale attempt ends nothing."""
    service = await make_service()
    executor = service.executor
    thread, _ = await service.records.create_thread(None, {})
    thread_id = thread["thread_id"]
    run, _, _ = await service.records.create_run(thread_id, "a", "supervisor", {}, {},
                                                 "enqueue")
    stale = {**run, "attempt": run["attempt"] + 1}
    assert (await executor.endings.end(stale, "success", None, "idle", viewing=True))[0] is None
    await service.redis.script_flush()
    record, answered, view = await executor.endings.end(run, "success", None, "idle", viewing=True)
    assert record["status"] == "success" and answered is None
    assert view.exists and view.run_ids == [run["run_id"]]
    assert view.queued == [run["run_id"].encode()]  # (it leaves its queue after)
    assert (await service.records.get_run(thread_id, run["run_id"]))["status"] == "success"
    assert (await service.records.get_thread(thread_id))["status"] == "idle"
    # ended already: the same end again is recognised as this attempt's, not written twice
    again, _, _ = await executor.endings.end(run, "success", None, "idle")
    assert again["status"] == "success"
