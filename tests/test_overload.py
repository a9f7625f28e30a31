"""Overload on the real Serve app: admission limits set low (live, through the supervisor's
``user_config``) so that a few dozen users overload it in seconds.

What must hold past capacity: refusals are 503 with a JSON ``detail`` and ``Retry-After``
(never a 500); thread creation and state reads keep working; every admitted turn's stream
ends with its outcome; no admitted turn is lost or duplicated; no run is re-tried without
a replica dying; no thread is left busy; the queue drives the supervisor's autoscaling."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field

import httpx
import pytest
from ray import serve

from agents.settings import PROJECT_ROOT, ApiSettings
from serve_app.ops.launcher import deploy, load_serve_config

CONFIG = PROJECT_ROOT / "configs" / "local.yaml"
LOW = {"max_concurrent_runs": 1, "max_queued_runs": 2, "max_queue_wait_s": 0.5}
USERS, TURNS = 24, 2


@dataclass
class Seen:
    refusals: list[tuple[float, str, dict]] = field(default_factory=list)  # (s, Retry-After, body)
    failures: list[str] = field(default_factory=list)
    admitted: dict[str, list[str]] = field(default_factory=dict)  # thread -> its turns
    runs: list[tuple[str, str]] = field(default_factory=list)
    state_reads: int = 0
    replicas_seen: int = 0


def metric(text: str, name: str) -> float:
    """A metric of ``GET /metrics`` summed over its series."""
    series = re.compile(rf"^agent_cluster_{name}(_total)?[{{ ]")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if series.match(line))


async def per_replica_metrics(http: httpx.AsyncClient, asks: int = 12) -> dict[str, str]:
    """``GET /metrics`` of every replica that answers ``asks`` requests."""
    answers = {}
    for _ in range(asks):
        reply = await http.get("/metrics")
        answers[reply.headers["x-replica-id"]] = reply.text
    return answers


async def retune(http: httpx.AsyncClient, port: int, limits: dict) -> None:
    """Deploy the same app with these admission limits (live: no replica restarts) and
    wait until every replica that answers has them."""
    deploy(load_serve_config(CONFIG, port, {"supervisor": limits}))
    slots = limits.get("max_concurrent_runs", ApiSettings().max_concurrent_runs)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answers = await per_replica_metrics(http, asks=8)
        if all(metric(text, "run_slots_max") == slots for text in answers.values()):
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"replicas not retuned to {limits}")


def supervisor_replicas() -> int:
    states = serve.status().applications["agent-cluster"].deployments["supervisor"]
    return sum(states.replica_states.values())


async def send(http: httpx.AsyncClient, thread_id: str, text: str, seen: Seen) -> str | None:
    """One turn as an SSE client sends it; 'refused' with the wait asked, or the outcome."""
    body = {"assistant_id": "supervisor", "stream_mode": ["values"],
            "input": {"messages": [{"role": "user", "content": text}]}}
    started = time.monotonic()
    async with http.stream("POST", f"/threads/{thread_id}/runs/stream", json=body) as reply:
        if reply.status_code == 503:
            detail = json.loads(await reply.aread())
            seen.refusals.append((time.monotonic() - started,
                                  reply.headers.get("retry-after", ""), detail))
            return "refused"
        if reply.status_code != 200:
            seen.failures.append(f"{reply.status_code}: {(await reply.aread())[:200]!r}")
            return None
        events, run_id = [], None
        async for line in reply.aiter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
            elif line.startswith("data: ") and events[-1] == "metadata":
                run_id = json.loads(line.removeprefix("data: "))["run_id"]
    if "error" in events or events[-1:] != ["end"]:
        seen.failures.append(f"stream of {text!r} ended {events[-3:]}")
        return None
    seen.runs.append((thread_id, run_id))
    return "done"


async def simulated_user(http: httpx.AsyncClient, index: int, seen: Seen) -> None:
    created = await http.post("/threads", json={})
    if created.status_code != 200:
        seen.failures.append(f"POST /threads {created.status_code}")
        return
    thread_id = created.json()["thread_id"]
    seen.admitted[thread_id] = []
    for turn in range(TURNS):
        text = f"user {index} turn {turn}: what is Redis persistence?"
        for _ in range(12):  # a patient client: it waits as long as it is told, then retries
            outcome = await send(http, thread_id, text, seen)
            if outcome != "refused":
                break
            await asyncio.sleep(float(seen.refusals[-1][1] or 1))
        if outcome == "done":
            seen.admitted[thread_id].append(text)
        state = await http.get(f"/threads/{thread_id}/state")
        if state.status_code != 200:
            seen.failures.append(f"GET state {state.status_code}")
        seen.state_reads += 1


async def watch_replicas(seen: Seen, stop: asyncio.Event, after_s: float = 20) -> None:
    """The most supervisor replicas seen, until ``after_s`` past ``stop`` (Serve decides
    on load it heard of up to 2 s late, holds the decision for the upscale delay, then
    starts the replica) or more than two are seen."""
    deadline = None
    while deadline is None or (time.monotonic() < deadline and seen.replicas_seen <= 2):
        if deadline is None and stop.is_set():
            deadline = time.monotonic() + after_s
        seen.replicas_seen = max(seen.replicas_seen,
                                 await asyncio.to_thread(supervisor_replicas))
        await asyncio.sleep(1)


@pytest.fixture
async def overloadable(cluster_url, stub_admin):
    port = int(cluster_url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=cluster_url, timeout=120) as http:
        stub_admin.post("/config", json={"ttft_ms": 150})
        await retune(http, port, LOW)
        try:
            yield http
        finally:
            await retune(http, port, {})


async def test_past_capacity_runs_are_refused_cleanly_and_no_turn_is_lost(overloadable):
    http, seen, stop = overloadable, Seen(), asyncio.Event()
    watcher = asyncio.create_task(watch_replicas(seen, stop))
    await asyncio.gather(*(simulated_user(http, i, seen) for i in range(USERS)))
    stop.set()
    await watcher

    assert seen.failures == []
    assert seen.refusals, "the cluster was not overloaded"
    for _, retry_after, body in seen.refusals:
        assert int(retry_after) >= 1 and "at capacity" in body["detail"]
    assert sorted(s for s, _, _ in seen.refusals)[len(seen.refusals) // 2] < 0.5  # at once
    assert seen.state_reads == USERS * TURNS
    assert sum(len(turns) for turns in seen.admitted.values()) == len(seen.runs) > USERS

    for thread_id, turns in seen.admitted.items():  # nothing lost, nothing twice, in order
        state = (await http.get(f"/threads/{thread_id}/state")).json()
        humans = [m["content"] for m in state["values"].get("messages", [])
                  if m["type"] == "human"]
        assert humans == turns, thread_id
    for thread_id, run_id in seen.runs:  # no run re-tried: no replica died
        run = (await http.get(f"/threads/{thread_id}/runs/{run_id}")).json()
        assert (run["status"], run["attempt"]) == ("success", 1), run
    for thread_id in seen.admitted:
        assert (await http.get(f"/threads/{thread_id}")).json()["status"] == "idle"

    answers = await per_replica_metrics(http)
    assert sum(metric(text, "runs_refused") for text in answers.values()) >= len(seen.refusals)
    assert seen.replicas_seen > 2, "the queue did not scale the supervisor up"
