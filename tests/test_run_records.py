"""A run's record and its thread's change together, in one step each, or not at all: a run
refused is never written, a run's end carries its thread's status and totals with it, and
an attempt that no longer owns the run writes neither."""

from __future__ import annotations

import asyncio
import collections
import re
import threading
import uuid

import redis

from serve_app.keys import pending_key, run_ref
from serve_app.resources.schemas import RunCreate
from serve_app.runs.records import ACTIVE, Records, RunEnd


def new_id() -> str:
    return f"rec-{uuid.uuid4().hex[:8]}"


async def test_a_refused_run_is_never_written_and_names_the_runs_before_it(redis_client):
    records = Records(redis_client)
    thread, _ = await records.create_thread(new_id(), {})
    tid = thread["thread_id"]

    first, joined, before = await records.create_run(tid, "a", "supervisor", {}, {}, "reject",
                                                     reject=True)
    assert joined == 1 and before == []
    second, joined, _ = await records.create_run(tid, "a", "supervisor", {}, {}, "enqueue")
    assert joined == 2
    refused, joined, before = await records.create_run(tid, "a", "supervisor", {}, {},
                                                       "reject", reject=True)

    assert refused is None and joined == 0
    assert before == [first["run_id"], second["run_id"]]
    assert {r["run_id"] for r in await records.list_runs(tid)} == \
        {first["run_id"], second["run_id"]}


async def test_a_run_that_names_its_graph_names_it_on_its_thread_unless_the_thread_is_gone(
        redis_client):
    records = Records(redis_client)
    thread, _ = await records.create_thread(new_id(), {"owner": "ann"})
    tid = thread["thread_id"]

    run, joined, _ = await records.create_run(
        tid, "a", "supervisor", {}, {}, "enqueue",
        thread_metadata={"owner": "ann", "graph_id": "supervisor"})
    assert run is not None and joined == 1
    assert (await records.get_thread(tid))["metadata"] == {"owner": "ann",
                                                            "graph_id": "supervisor"}

    gone = new_id()
    run, joined, _ = await records.create_run(gone, "a", "supervisor", {}, {}, "enqueue",
                                              thread_metadata={"graph_id": "supervisor"})
    assert (run, joined) == (None, -1)
    assert await records.get_thread(gone) is None
    assert await records.list_runs(gone) == []


async def test_a_run_ends_with_its_thread_and_a_stale_attempt_changes_neither(redis_client):
    records = Records(redis_client)
    thread, _ = await records.create_thread(new_id(), {})
    tid = thread["thread_id"]
    run, _, _ = await records.create_run(tid, "a", "supervisor", {}, {}, "enqueue")
    first = await records.transition_run(run, {"pending"}, thread_fields={"status": "busy"},
                                         status="running")
    assert first["status"] == "running"
    assert (await records.get_thread(tid))["status"] == "busy"
    second = await records.transition_run(first, {"running"}, status="pending", attempt=2)
    second = await records.transition_run(second, {"pending"}, status="running")
    asks = '{"at": 1}'
    end = RunEnd(fields={"usage": {"runs": 1}}, totals={"runs": 1, "cost_usd": 0.5},
                 asks=asks)

    stale, _ = await records.end_run(first, ACTIVE, {"status": "idle"}, end, status="error")
    assert stale is None
    assert (await records.get_thread(tid))["status"] == "busy"
    assert "usage" not in await records.get_thread(tid)

    ended, answered = await records.end_run(second, ACTIVE, {"status": "interrupted"}, end,
                                            status="success")
    assert ended["status"] == "success" and ended["attempt"] == 2 and answered is None
    stored = await records.get_run(tid, run["run_id"])
    assert stored["status"] == "success" and stored["usage"] == {"runs": 1}
    stored_thread = await records.get_thread(tid)
    assert stored_thread["status"] == "interrupted"
    assert stored_thread["usage"] == {"runs": 1, "cost_usd": 0.5}
    assert stored_thread["approval_requested"] == {"at": 1}

    resume, _, _ = await records.create_run(tid, "a", "supervisor", {}, {}, "enqueue")
    resume = await records.transition_run(resume, {"pending"}, status="running")
    _, answered = await records.end_run(
        resume, ACTIVE, {"status": "idle"},
        RunEnd(totals={"runs": 1, "cost_usd": 0.25}, answers=True), status="success")
    assert answered == {"at": 1}
    stored_thread = await records.get_thread(tid)
    assert stored_thread["usage"] == {"runs": 2, "cost_usd": 0.75}
    assert "approval_requested" not in stored_thread


class Monitor:
    """Every command Redis runs (MONITOR, inside scripts too), from a thread of its own."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url)
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.client.ping()  # one more command, so the monitor wakes up and sees the stop
        self._thread.join(timeout=5)
        self.client.close()

    def _watch(self) -> None:
        with self.client.monitor() as monitor:
            for command in monitor.listen():
                if self._stop.is_set():
                    return
                self.lines.append(command["command"])


# Not the run's lifecycle: checkpoints (and the fenced writes that check its lease), events,
# specialists' sub-threads, lease renewals.
NOT_LIFECYCLE = re.compile(r":checkpoints|:writes:|:events|\}/|:active|^ZADD \S+:running XX")


async def research_turn(service, monitor: Monitor) -> tuple[str, str]:
    """A new thread and one research run on it, until the run's last lifecycle command
    (off the pool's pending set): (thread id, run id)."""
    thread = await service.threads.create(None, {})
    tid = thread["thread_id"]
    run = await service.runs.create(tid, RunCreate.model_validate({
        "assistant_id": "supervisor", "stream_mode": ["values"],
        "input": {"messages": [{"role": "user", "content": "What is Redis persistence?"}]}}))
    done = f"ZREM {pending_key(service.executor.pool.name)} {run_ref(tid, run['run_id'])}"
    for _ in range(600):
        if done in monitor.lines:
            return tid, run["run_id"]
        await asyncio.sleep(0.05)
    raise AssertionError("the run never finished")


async def test_a_run_lifecycle_stays_within_its_redis_budget(settings, in_process_service):
    """Redis commands on a thread's records and queue and the pool's sets, for a new thread
    and one research run on it, scripts loaded (issue #10: 56 before the lifecycle was
    folded into a few scripts, 34 after)."""
    async with in_process_service(settings, "budget") as service:
        with Monitor(settings.redis_url) as monitor:
            await research_turn(service, monitor)  # loads the scripts
            monitor.lines.clear()
            tid, run_id = await research_turn(service, monitor)
    ours = [line for line in monitor.lines if tid in line and not NOT_LIFECYCLE.search(line)]
    shapes = collections.Counter(" ".join(line.split()[:2]).replace(tid, "<t>")
                                 .replace(run_id, "<r>") for line in ours)
    assert len(ours) <= 36, "\n".join(f"{n} {shape}" for shape, n in shapes.most_common())
    assert (await service.records.get_run(tid, run_id))["status"] == "success"
