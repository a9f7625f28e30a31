"""A failing model provider (agents/breaker.py, agents/models.py) against the stub's faults,
in-process services over the real Redis: a 429 storm's Retry-After holds back every replica;
an outage opens the shared circuit breaker, admission then refuses new runs with 503 and
Retry-After, runs in flight fail fast with the cause, and runs go on once the provider is
back, with no restart; a hanging call is cut at model.timeout_s and tried again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from agents import telemetry
from agents.breaker import REFRESH_S
from agents.keys import breaker_key
from agents.models import endpoint
from agents.settings import Settings
from serve_app.resources.api_errors import ApiError
from serve_app.resources.schemas import RunCreate

QUESTION = "What is Redis persistence?"


def faulty(settings: Settings, retries: int, timeout_s: float = 30.0, **breaker: Any
           ) -> Settings:
    return settings.model_copy(update={
        "model": settings.model.model_copy(update={"max_retries": retries,
                                                   "timeout_s": timeout_s}),
        "breaker": settings.breaker.model_validate(breaker)})


def turn(text: str = QUESTION) -> RunCreate:
    return RunCreate.model_validate({
        "assistant_id": "supervisor", "stream_mode": ["values"],
        "input": {"messages": [{"role": "user", "content": text}]}})


async def finished(service, run: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
    return await asyncio.wait_for(
        service.streams.wait_for_end(run["thread_id"], run["run_id"]), timeout_s)


async def ask(service, text: str = QUESTION, admitted: bool = False) -> dict[str, Any]:
    thread, _ = await service.records.create_thread(None, {})
    create = service.runs.record if admitted else service.runs.create  # record: no admission
    run = await create(thread["thread_id"], turn(text))
    return await finished(service, run)


@pytest.fixture
async def closed_breaker(stub_url, redis_client):
    """The stub's breaker closed before and after (other tests share the endpoint)."""
    key = breaker_key(endpoint(stub_url))
    await redis_client.delete(key)
    yield key
    await redis_client.delete(key)


async def test_a_429_storms_retry_after_holds_back_every_replica(
        settings, in_process_service, stub_admin, closed_breaker):
    tuned = faulty(settings, retries=4, failures=10, cooldown_s=1, max_wait_s=10)
    async with in_process_service(tuned, "storm-a") as one, \
            in_process_service(tuned, "storm-b") as two:
        stub_admin.post("/reset")
        stub_admin.post("/config", json={"fault_status": 429, "retry_after_s": 1,
                                         "fault_for_s": 1.2})
        outcomes = await asyncio.gather(ask(one), ask(two))
        calls = stub_admin.get("/stats").json()["calls"]

    assert [o["status"] for o in outcomes] == ["success", "success"]
    refused = [c for c in calls if c["status"] == 429]
    assert refused  # the storm was met
    for failure in refused:  # once it knew (REFRESH_S), no replica called in Retry-After
        known = failure["finished"] + REFRESH_S + 0.05
        early = [c for c in calls if known < c["started"] < failure["finished"] + 0.95]
        assert not early, (failure, early)
    assert len(refused) <= 4  # not each call hammering on its own


async def test_an_outage_opens_the_breaker_for_every_run_and_runs_go_on_after_it(
        settings, in_process_service, stub_admin, stub_url, redis_client, closed_breaker):
    tuned = faulty(settings, retries=1, failures=2, cooldown_s=2, max_wait_s=0)
    async with in_process_service(tuned, "outage") as service:
        stub_admin.post("/reset")
        stub_admin.post("/config", json={"fault_status": 503, "fault_for_s": 3})
        telemetry.set_meter(service.metrics)
        try:
            first = await ask(service)  # two attempts, two failures: the breaker opens
        finally:
            telemetry.set_meter(None)
        assert service.metrics.total("model_attempts_failed", endpoint=endpoint(stub_url),
                                     cause="HTTP 503") == 2
        assert first["status"] == "error"
        assert first["error"]["error"] == "ModelUnavailable"
        assert "HTTP 503" in first["error"]["message"]
        assert stub_admin.get("/stats").json()["requests"] == 2
        assert await redis_client.hget(closed_breaker, "cause") == b"HTTP 503"

        with pytest.raises(ApiError) as refused:  # new runs: refused at once
            await service.runs.admit()
        assert refused.value.status == 503
        assert "circuit breaker is open" in refused.value.detail
        assert "HTTP 503" in refused.value.detail
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 2

        requests = stub_admin.get("/stats").json()["requests"]
        started = time.monotonic()
        in_flight = await ask(service, admitted=True)  # already admitted: fails fast
        assert in_flight["status"] == "error"
        assert in_flight["error"]["error"] == "ModelUnavailable"
        assert "circuit breaker reopens" in in_flight["error"]["message"]
        assert time.monotonic() - started < 1.5
        assert stub_admin.get("/stats").json()["requests"] == requests  # not called

        await asyncio.sleep(3.2)  # the outage ends, the cool-down is over
        assert (await ask(service))["status"] == "success"  # no restart
        assert not await redis_client.exists(closed_breaker)  # closed for everyone


async def test_a_run_in_flight_waits_for_the_breaker_within_its_deadline(
        settings, in_process_service, stub_admin, closed_breaker):
    tuned = faulty(settings, retries=1, failures=2, cooldown_s=1.5, max_wait_s=10)
    async with in_process_service(tuned, "wait") as service:
        stub_admin.post("/reset")
        stub_admin.post("/config", json={"fault_status": 503, "fault_for_s": 1})
        started = time.monotonic()
        outcome = await ask(service, admitted=True)
        assert outcome["status"] == "success"
        assert time.monotonic() - started >= 1.4  # it waited out the cool-down
        assert stub_admin.get("/stats").json()["faults"] == 2


async def test_a_hanging_call_is_cut_at_the_timeout_and_tried_again(
        settings, in_process_service, stub_admin, closed_breaker):
    tuned = faulty(settings, retries=2, timeout_s=1.0)
    async with in_process_service(tuned, "hang") as service:
        stub_admin.post("/reset")
        # seed 59: the first request hangs (draw 0.22 < 0.3), the next ones do not
        stub_admin.post("/config", json={"hang_rate": 0.3, "hang_s": 8, "seed": 59})
        started = time.monotonic()
        outcome = await ask(service)
        took = time.monotonic() - started
        stats = stub_admin.get("/stats").json()

    assert outcome["status"] == "success"
    assert stats["hangs"] == 1
    assert 1.0 <= took < 6  # cut at the timeout, not waited out (8 s)


async def test_after_the_cool_down_one_call_probes_while_the_others_wait(
        settings, in_process_service, stub_admin, closed_breaker):
    tuned = faulty(settings, retries=1, failures=2, cooldown_s=1, max_wait_s=20)
    async with in_process_service(tuned, "probe") as service:
        stub_admin.post("/reset")
        stub_admin.post("/config", json={"fault_status": 503, "fault_for_s": 60})
        runs = [asyncio.create_task(ask(service, admitted=True)) for _ in range(4)]
        await asyncio.sleep(3.5)  # three cool-downs of a provider still down
        failed = stub_admin.get("/stats").json()["faults"]
        stub_admin.post("/config", json={"fault_for_s": 0})  # it is back
        outcomes = await asyncio.gather(*runs)

    assert [o["status"] for o in outcomes] == ["success"] * 4
    # the four first calls fail (opening it), then one probe per cool-down, not four
    assert 4 <= failed <= 4 + 4, failed


def test_the_stubs_faults_are_an_outage_with_retry_after_then_none(stub_url, stub_admin):
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    stub_admin.post("/config", json={"fault_status": 503, "retry_after_s": 2,
                                     "fault_for_s": 0.5})
    with httpx.Client(base_url=stub_url, timeout=10) as http:
        down = http.post("/chat/completions", json=chat)
        assert down.status_code == 503 and down.headers["retry-after"] == "2"
        time.sleep(0.6)
        assert http.post("/chat/completions", json=chat).status_code == 200  # over by itself
        stub_admin.post("/config", json={"hang_rate": 1.0, "hang_s": 0.5})
        started = time.monotonic()
        assert http.post("/chat/completions", json=chat).status_code == 200
        assert time.monotonic() - started >= 0.5
