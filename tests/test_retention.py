"""Bounded Redis memory and a thread lifecycle that leaves nothing behind (issue 11): the
API's service in one process (no Ray), on the session's real Redis and stub model."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import httpx
import pytest
from redis.asyncio import Redis

from agents.keys import checkpoints_key
from agents.settings import Settings
from agents.system import AgentSystem
from agents.tools.backoffice import effect_counts
from serve_app.api.http_api import build_api
from serve_app.keys import ALL_THREADS, THREAD_EXPIRY, audit_key
from serve_app.ops.leaks import find_orphans
from serve_app.resources.api_errors import ApiError
from serve_app.resources.schemas import RunCreate
from serve_app.resources.service import AgentService


@pytest.fixture
async def service(settings: Settings):
    """The service over in-process graphs; finished runs' events (and thread-less runs'
    threads) go after 1 s, expired threads are swept every 0.3 s."""
    quick = settings.model_copy(update={"retention": settings.retention.model_copy(
        update={"events_grace_s": 1, "sweep_interval_s": 0.3})})
    async with await AgentSystem.create(quick) as system:
        built = AgentService.in_process(system, replica_id=f"retention-{uuid.uuid4().hex[:6]}")
        built.executor.start()
        yield built
        await built.aclose()


def new_id() -> str:
    return f"ret-{uuid.uuid4()}"


def user(text: str, **extra) -> RunCreate:
    return RunCreate.model_validate({
        "assistant_id": "supervisor", "stream_mode": ["values"],
        "input": {"messages": [{"role": "user", "content": text}]}, **extra})


def approval(by: str = "alice") -> RunCreate:
    return RunCreate.model_validate({"assistant_id": "supervisor", "command": {
        "resume": {"action": "approve", "by": by}}})


async def settled(service: AgentService, run: dict, timeout_s: float = 60) -> dict:
    """The run's record once it is over and its thread is free (retention done)."""
    record = await asyncio.wait_for(service.streams.wait_for_end(run["thread_id"], run["run_id"]),
                                    timeout_s)
    while await service.executor.leases.queued(run["thread_id"]):
        await asyncio.sleep(0.02)
    return record


async def turn(service: AgentService, thread_id: str | None, body: RunCreate) -> dict:
    return await settled(service, await service.runs.create(thread_id, body))


async def keys_of(redis: Redis, thread_id: str) -> list[str]:
    """Every key naming the thread: its own, its checkpoints', its sub-threads' and their
    effect ledger entries'."""
    return sorted([k.decode() async for k in redis.scan_iter(match=f"*{thread_id}*",
                                                               count=5000)])


async def bytes_of(redis: Redis, thread_id: str) -> int:
    return sum([await redis.memory_usage(k, samples=0) or 0  # every field, not a sample
                for k in await keys_of(redis, thread_id)])


async def raw_conversation(service: AgentService, thread_id: str) -> int:
    """The thread's messages as GET /threads/{id}/state returns them (compact JSON)."""
    state = await service.threads.get_state(thread_id)
    return len(json.dumps(state["values"]["messages"], separators=(",", ":")).encode())


async def wait_until(check, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_twenty_turns_keep_every_checkpoint_and_grow_linearly(service):
    """The default keeps every checkpoint of the thread (history as LangGraph lists it);
    its bytes stay linear in turns (a checkpoint stores its new messages only) and within
    a bound of the conversation; the specialists' finished sub-threads still go."""
    thread_id = new_id()
    await service.threads.create(thread_id, {})
    sizes = {}
    for n in range(1, 21):
        run = await turn(service, thread_id, user(f"What is Redis persistence? ({n})"))
        assert run["status"] == "success"
        if n in (10, 20):
            await asyncio.sleep(1.2)  # the finished runs' event streams are gone
            sizes[n] = await bytes_of(service.redis, thread_id)
    raw = await raw_conversation(service, thread_id)
    assert sizes[20] <= 8 * raw, (sizes, raw)
    assert sizes[20] <= 2.2 * sizes[10], sizes  # linear: 2x the turns, ~2x the bytes
    fields = [f.decode() for f in await service.redis.hkeys(checkpoints_key(thread_id))]
    assert not [f for f in fields if "/researcher/" in f]  # specialists' sub-threads went
    checkpoints = [f for f in fields if f[0] not in "!~" and not f.endswith("#latest")]
    history = await service.threads.history(thread_id, 1000, None, None)
    assert len(history) == len(checkpoints) >= 3 * 20  # input, supervisor, worker... a turn
    assert not [k for k in await keys_of(service.redis, thread_id) if "/researcher/" in k]


async def test_a_pruned_checkpoint_is_404_with_a_clear_detail(service):
    service.retention.settings = service.retention.settings.model_copy(
        update={"keep_latest": 1})
    thread_id = new_id()
    await service.threads.create(thread_id, {})
    await turn(service, thread_id, user("What is Redis persistence?"))
    first = (await service.threads.get_state(thread_id))["checkpoint_id"]
    await turn(service, thread_id, user("What is Redis persistence?"))
    history = await service.threads.history(thread_id, 100, None, None)
    assert [h["checkpoint_id"] for h in history] == \
        [(await service.threads.get_state(thread_id))["checkpoint_id"]]
    with pytest.raises(ApiError) as gone:
        await service.threads.get_state(thread_id, first)
    assert gone.value.status == 404 and "pruned" in gone.value.detail
    with pytest.raises(ApiError) as fork:
        await service.runs.create(thread_id, user("again", checkpoint_id=first))
    assert fork.value.status == 404


async def test_history_keeps_the_latest_k_and_young_ones(service):
    service.retention.settings = service.retention.settings.model_copy(
        update={"keep_latest": 3})
    thread_id = new_id()
    await service.threads.create(thread_id, {})
    for _ in range(3):
        await turn(service, thread_id, user("What is Redis persistence?"))
    assert len(await service.threads.history(thread_id, 100, None, None)) == 3
    service.retention.settings = service.retention.settings.model_copy(
        update={"keep_latest": 1, "keep_for_s": 3600})
    await turn(service, thread_id, user("What is Redis persistence?"))
    assert len(await service.threads.history(thread_id, 100, None, None)) > 3  # all young


async def test_delete_removes_every_key_and_the_id_comes_back_empty(service):
    thread_id = new_id()
    await service.threads.create(thread_id, {"owner": "alice"}, ttl=60)
    await turn(service, thread_id, user("What is Redis persistence?"))
    await turn(service, thread_id, user("Refund $5 to order 42"))
    await turn(service, thread_id, approval())  # a ledger entry and an audit record
    await turn(service, thread_id, user("Refund $7 to order 42"))  # a pending sub-thread
    keys = await keys_of(service.redis, thread_id)
    assert any(":effect/coder/" in k for k in keys)  # the refund's ledger entry
    assert await service.redis.llen(audit_key(thread_id)) == 1
    assert any("/coder/" in k for k in keys)

    await service.threads.delete(thread_id)
    assert await keys_of(service.redis, thread_id) == []
    assert await service.redis.zscore(ALL_THREADS, thread_id) is None
    assert await service.redis.zscore(THREAD_EXPIRY, thread_id) is None
    with pytest.raises(ApiError) as gone:
        await service.threads.get_state(thread_id)
    assert gone.value.status == 404

    again = await service.threads.create(thread_id, {})
    assert again["values"] == {} and again["metadata"] == {}
    assert (await service.threads.get_state(thread_id))["values"] == {}
    assert await service.threads.history(thread_id, 10, None, None) == []
    await service.threads.delete(thread_id)


async def test_deleting_a_busy_thread_cancels_its_runs_first(service, stub_admin):
    thread_id = new_id()
    await service.threads.create(thread_id, {})
    await turn(service, thread_id, user("What is Redis persistence?"))
    stub_admin.post("/config", json={"ttft_ms": 800})
    running = await service.runs.create(thread_id, user("What is Redis persistence?"))
    queued = await service.runs.create(thread_id, user("What is Redis persistence?"))
    await wait_until(lambda: _status_is(service, running, "running"))
    await service.threads.delete(thread_id)
    await asyncio.sleep(0.5)  # anything the cancelled runs might still write
    assert await keys_of(service.redis, thread_id) == []
    assert await service.records.get_run(thread_id, queued["run_id"]) is None


async def _status_is(service: AgentService, run: dict, status: str) -> bool:
    record = await service.records.get_run(run["thread_id"], run["run_id"])
    return bool(record) and record["status"] == status


async def test_retention_keeps_what_a_pending_approval_needs(service, settings):
    thread_id = new_id()
    await service.threads.create(thread_id, {})
    await turn(service, thread_id, user("What is Redis persistence?"))
    await turn(service, thread_id, user("Refund $9 to order 42"))
    pending = await service.threads.pending_approvals(thread_id)
    assert [p["tool"] for p in pending] == ["issue_refund"]
    await service.threads.prune([thread_id], "keep_latest")  # as hard as pruning goes
    await service.retention.prune_checkpoints(thread_id, keep_latest=1)
    assert await service.threads.pending_approvals(thread_id) == pending
    before = (await effect_counts(service.redis)).get("issue_refund", 0)

    # approved through another replica (its own process-local pool and executor)
    async with await AgentSystem.create(settings) as system:
        other = AgentService.in_process(system, replica_id=f"other-{uuid.uuid4().hex[:6]}")
        other.executor.start()
        try:
            done = await turn(other, thread_id, approval("bob"))
        finally:
            await other.aclose()
    assert done["status"] == "success"
    assert (await effect_counts(service.redis)).get("issue_refund", 0) == before + 1
    assert await service.threads.pending_approvals(thread_id) == []
    audit = [json.loads(e) for e in await service.redis.lrange(audit_key(thread_id), 0, -1)]
    assert [(a["tool"], a["action"], a["by"]) for a in audit] == \
        [("issue_refund", "approve", "bob")]
    assert audit[0]["result"] and "refund_id" in audit[0]["result"]
    # the specialist's sub-thread went; its ledger entry stays (exactly-once, audit)
    assert [k for k in await keys_of(service.redis, thread_id) if "/coder/" in k] == \
        [audit[0]["effect_key"]]


async def test_a_thread_ttl_deletes_it_entirely(service):
    thread_id = new_id()
    created = await service.threads.create(thread_id, {}, ttl={"strategy": "delete",
                                                              "ttl": 0.05})  # 3 s
    assert created["ttl"] == {"strategy": "delete", "ttl": 0.05}
    await turn(service, thread_id, user("What is Redis persistence?"))
    assert await keys_of(service.redis, thread_id)

    async def gone() -> bool:
        return not await keys_of(service.redis, thread_id)
    await wait_until(gone, timeout_s=20)
    assert await service.redis.zscore(ALL_THREADS, thread_id) is None
    with pytest.raises(ApiError) as refused:
        await service.threads.create(new_id(), {}, ttl={"strategy": "archive", "ttl": 1})
    assert refused.value.status == 422


async def test_update_sets_a_ttl_and_the_default_idle_ttl_applies(service):
    thread_id = new_id()
    await service.threads.create(thread_id, {})
    assert await service.redis.zscore(THREAD_EXPIRY, thread_id) is None
    await service.threads.update(thread_id, {}, ttl=30)
    due = await service.redis.zscore(THREAD_EXPIRY, thread_id)
    assert abs(due - (time.time() + 1800)) < 60
    service.retention.settings = service.retention.settings.model_copy(
        update={"thread_ttl_minutes": 0.02})
    idle = new_id()
    await service.threads.create(idle, {})

    async def gone() -> bool:
        return await service.records.get_thread(idle) is None
    await wait_until(gone)
    assert await keys_of(service.redis, idle) == []
    await service.threads.delete(thread_id)


async def test_prune_deletes_or_keeps_the_latest(service):
    service.retention.settings = service.retention.settings.model_copy(
        update={"keep_latest": 10})
    keep, drop = new_id(), new_id()
    for thread_id in (keep, drop):
        await service.threads.create(thread_id, {})
        for _ in range(2):
            await turn(service, thread_id, user("What is Redis persistence?"))
    values = (await service.threads.get_state(keep))["values"]
    assert len(await service.threads.history(keep, 100, None, None)) > 1

    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_api(service)),
                            base_url="http://test")
    async with api:
        kept = await api.post("/threads/prune", json={"thread_ids": [keep, new_id()],
                                                      "strategy": "keep_latest"})
        assert kept.status_code == 200 and kept.json() == {"pruned_count": 1}
        assert len(await service.threads.history(keep, 100, None, None)) == 1
        assert (await service.threads.get_state(keep))["values"] == values

        dropped = await api.post("/threads/prune", json={"thread_ids": [drop]})  # SDK default
        assert dropped.json() == {"pruned_count": 1}
        assert (await api.get(f"/threads/{drop}")).status_code == 404
        assert await keys_of(service.redis, drop) == []
        assert (await api.delete(f"/threads/{keep}")).status_code == 204
        assert (await api.delete(f"/threads/{keep}")).status_code == 404


async def test_rollback_leaves_no_checkpoint_of_the_rolled_back_run(service, stub_admin):
    service.retention.settings = service.retention.settings.model_copy(
        update={"keep_latest": 50})
    thread_id = new_id()
    await service.threads.create(thread_id, {})
    await turn(service, thread_id, user("What is Redis persistence?"))
    before = await service.threads.get_state(thread_id)
    kept = {h["checkpoint_id"] for h in await service.threads.history(thread_id, 100, None, None)}

    stub_admin.post("/config", json={"ttft_ms": 600})
    run = await service.runs.create(thread_id, user("Research how Redis persistence works "
                                                   "and write a Python function that "
                                                   "parses a redis.conf line"))

    async def wrote() -> bool:
        return (await service.threads.get_state(thread_id))["checkpoint_id"] != \
            before["checkpoint_id"]
    await wait_until(wrote)
    await asyncio.sleep(1.0)  # a step or two in, specialists at work
    await service.runs.cancel(thread_id, run["run_id"], wait=True, action="rollback")
    while await service.executor.leases.queued(thread_id):
        await asyncio.sleep(0.02)

    assert [s for s in await service.retention.saver.stored(thread_id)
            if s.run_id == run["run_id"]] == []
    assert {h["checkpoint_id"] for h in await service.threads.history(thread_id, 100, None, None)} \
        == kept
    after = await service.threads.get_state(thread_id)
    assert after["checkpoint_id"] == before["checkpoint_id"]
    assert after["values"] == before["values"]
    assert await service.records.get_run(thread_id, run["run_id"]) is None
    assert not [k for k in await keys_of(service.redis, thread_id) if k.count("/") >= 2]
    assert not await service.retention.saver.stored(thread_id, sub_threads=True)
    stub_admin.post("/config", json={"ttft_ms": 0})
    assert (await turn(service, thread_id, user("What did I ask before?")))["status"] == \
        "success"


async def test_thread_less_runs_honour_on_completion(service):
    gone = await turn(service, None, user("What is Redis persistence?"))
    kept = await turn(service, None, user("What is Redis persistence?",
                                          on_completion="keep"))
    assert gone["status"] == kept["status"] == "success"
    assert await service.records.get_thread(gone["thread_id"])  # readable during the grace

    async def deleted() -> bool:
        return not await keys_of(service.redis, gone["thread_id"])
    await wait_until(deleted)
    assert await service.records.get_thread(kept["thread_id"])
    await service.threads.delete(kept["thread_id"])


async def test_redis_full_is_503_then_writes_work_again_and_nothing_is_lost(
        service, redis_client, caplog):
    thread_id = new_id()
    await service.threads.create(thread_id, {})
    await turn(service, thread_id, user("What is Redis persistence?"))
    state = await service.threads.get_state(thread_id)
    original = (await redis_client.config_get("maxmemory"))["maxmemory"]
    used = int((await redis_client.info("memory"))["used_memory"])
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_api(service)),
                            base_url="http://test")
    async with api:
        try:
            await redis_client.config_set("maxmemory", int(used / 0.9))
            with caplog.at_level(logging.WARNING, logger="serve_app.runs.retention"):
                assert await service.retention.check_memory() >= 0.85
            assert "maxmemory" in caplog.text
            assert service.metrics.prometheus().count("redis_memory_ratio") >= 1

            await redis_client.config_set("maxmemory", used // 2)  # full
            created = await api.post("/threads", json={})
            assert created.status_code == 503
            assert "maxmemory" in created.json()["detail"]
            run = await api.post(f"/threads/{thread_id}/runs",
                                 json={"assistant_id": "supervisor", "input": {
                                     "messages": [{"role": "user", "content": "hi"}]}})
            assert run.status_code == 503
            read = await api.get(f"/threads/{thread_id}/state")
            assert read.status_code == 200 and read.json()["values"] == state["values"]
        finally:
            await redis_client.config_set("maxmemory", original)
        assert (await api.get(f"/threads/{thread_id}/state")).json()["values"] == \
            state["values"]
        again = await api.post(f"/threads/{thread_id}/runs/wait",
                               json={"assistant_id": "supervisor", "input": {
                                   "messages": [{"role": "user", "content": "hi"}]}})
        assert again.status_code == 200
        assert len(again.json()["messages"]) == len(state["values"]["messages"]) + 2


async def test_no_orphans_after_a_mixed_workload(service, stub_admin):
    prefix = f"ret-leak-{uuid.uuid4().hex[:8]}"
    threads = [f"{prefix}-{i}" for i in range(5)]
    for thread_id in threads:
        await service.threads.create(thread_id, {})
    # plain turns, an approval, a rejected approval, a pending approval
    await turn(service, threads[0], user("What is Redis persistence?"))
    await turn(service, threads[0], user("Refund $5 to order 42"))
    await turn(service, threads[0], approval())
    await turn(service, threads[1], user("Refund $6 to order 42"))
    await turn(service, threads[1], RunCreate.model_validate({
        "assistant_id": "supervisor", "command": {"resume": {"action": "reject",
                                                             "by": "carol"}}}))
    await turn(service, threads[2], user("Delete all records of customer 7"))
    # a failure (model errors), a cancel, a rollback, then a delete
    stub_admin.post("/config", json={"fault_rate": 1.0})
    failed = await turn(service, threads[3], user("What is Redis persistence?"))
    assert failed["status"] == "error"
    stub_admin.post("/config", json={"fault_rate": 0.0, "ttft_ms": 500})
    cancelled = await service.runs.create(threads[3], user("What is Redis persistence?"))
    rolled = await service.runs.create(threads[4], user("What is Redis persistence?"))
    await asyncio.sleep(1.2)
    await service.runs.cancel(threads[3], cancelled["run_id"], wait=True, action="interrupt")
    await service.runs.cancel(threads[4], rolled["run_id"], wait=True, action="rollback")
    stub_admin.post("/config", json={"ttft_ms": 0})
    await turn(service, threads[3], user("What is Redis persistence?"))
    await service.threads.delete(threads[0])
    # a thread-less run whose thread goes after the grace
    await turn(service, None, user("What is Redis persistence?"))
    for thread_id in threads[1:]:
        while await service.executor.leases.queued(thread_id):
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # the event streams' grace
    assert await find_orphans(service.redis, prefix) == []
    assert await find_orphans(service.redis, "ret-") == []
    for thread_id in threads[1:]:
        await service.threads.delete(thread_id)
    assert await find_orphans(service.redis, prefix) == []


async def test_a_run_caught_by_a_full_redis_ends_cleanly_once_space_is_freed(
        service, redis_client, stub_admin):
    thread_id = new_id()
    await service.threads.create(thread_id, {})
    await turn(service, thread_id, user("What is Redis persistence?"))
    before = await service.threads.get_state(thread_id)
    original = (await redis_client.config_get("maxmemory"))["maxmemory"]
    stub_admin.post("/config", json={"ttft_ms": 400})
    run = await service.runs.create(thread_id, user("What is Redis persistence?"))
    await wait_until(lambda: _status_is(service, run, "running"))
    used = int((await redis_client.info("memory"))["used_memory"])
    try:
        await redis_client.config_set("maxmemory", used // 2)  # full mid-run
        await asyncio.sleep(1.5)
    finally:
        await redis_client.config_set("maxmemory", original)
    stub_admin.post("/config", json={"ttft_ms": 0})
    outcome = await settled(service, run, timeout_s=90)
    assert outcome["status"] in ("success", "error")  # retried from its last checkpoint
    state = await service.threads.get_state(thread_id)  # readable, and the earlier turn intact
    assert state["values"]["messages"][:len(before["values"]["messages"])] == \
        before["values"]["messages"]
    assert (await turn(service, thread_id, user("What did I ask before?")))["status"] == \
        "success"


async def test_no_orphans_after_a_replica_dies_mid_run(service, stub_admin):
    """A replica killed mid-run (no terminal writes, its lease left to expire): the
    replica that inherits the run finishes it, and nothing is left behind."""
    prefix = f"ret-kill-{uuid.uuid4().hex[:8]}"
    thread_id = f"{prefix}-0"
    await service.threads.create(thread_id, {})
    pool = f"victim-{uuid.uuid4().hex[:6]}"
    checkpointer = service.executor.checkpointer

    def replica(name: str) -> AgentService:
        built = AgentService(service.redis, service.graphs, service.settings, name,
                             checkpointer, pool=pool, retention=service.retention.settings)
        built.executor.start()
        return built

    victim = replica("victim")
    stub_admin.post("/config", json={"ttft_ms": 500})
    run = await victim.runs.create(thread_id, user("What is Redis persistence?"))
    await wait_until(lambda: _status_is(service, run, "running"))
    await asyncio.sleep(0.8)

    async def dead(*_args, **_kwargs) -> None:  # a dead process writes no ending
        return None
    victim.executor.endings.finish = dead
    for task in list(victim.executor._in_slots):
        task.cancel()
    await victim.aclose()  # no more pulls, sweeps or lease renewals
    stub_admin.post("/config", json={"ttft_ms": 0})

    heir = replica("heir")
    try:
        outcome = await settled(heir, run, timeout_s=60)
    finally:
        await heir.aclose()
    assert outcome["status"] == "success" and outcome["attempt"] == 2
    await asyncio.sleep(1.2)  # the event stream's grace
    assert await find_orphans(service.redis, prefix) == []
    await service.threads.delete(thread_id)
    assert await find_orphans(service.redis, prefix) == []
