"""Budgets (agents/budgets.py) over the real Redis and the stub model, in-process service: a
runaway run stops at its budget, within one model call of the limit; a run's own budget
never goes above the operator's; spend counted in Redis survives a new attempt; a user
over a windowed budget is refused at creation with 429 and when the window resets."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from agents import telemetry
from agents.budgets import Budgets
from agents.keys import spend_key
from agents.settings import AuthSettings, LimitsSettings, Settings
from serve_app.api.http_api import build_api
from serve_app.resources.schemas import RunCreate

LOOP = "Research this and loop forever"
QUESTION = "What is Redis persistence?"
AUTH_FILE = "./tests/langgraph_auth.py:auth"
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}


def with_budgets(settings: Settings, **budgets: Any) -> Settings:
    """``settings`` with these budgets and a researcher that may loop 60 steps (its own
    step limit is not what stops a runaway here)."""
    roles = {name: role.model_copy(update={"max_steps": 60})
             for name, role in settings.roles.items()}
    return settings.model_copy(update={
        "budgets": settings.budgets.model_validate(budgets), "roles": roles,
        "api": settings.api.model_copy(update={"run_timeout_s": 60.0})})


def turn(text: str, **extra: Any) -> RunCreate:
    return RunCreate.model_validate({
        "assistant_id": "supervisor", "stream_mode": ["values"],
        "input": {"messages": [{"role": "user", "content": text}]}, **extra})


async def ended(service, run: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
    return await asyncio.wait_for(
        service.streams.wait_for_end(run["thread_id"], run["run_id"]), timeout_s)


async def spent(service, run: dict[str, Any]) -> tuple[int, float]:
    """Model calls and cost the run was charged in Redis."""
    counters = await service.redis.hgetall(spend_key(run["thread_id"], run["run_id"]))
    return int(counters[b"steps"]), float(counters[b"cost_usd"])


async def test_a_runaway_run_stops_at_its_cost_budget_and_the_thread_takes_the_next_run(
        settings, in_process_service):
    limit = 0.0005  # USD: a dozen steps or so of the stub's loop (prices.yaml: stub-model)
    async with in_process_service(with_budgets(settings, run={"max_cost_usd": limit}),
                                  "budget-run") as service:
        thread, _ = await service.records.create_thread(None, {})
        run = await service.runs.create(thread["thread_id"], turn(LOOP))
        frames = b"".join([f async for f in service.streams.events(run["thread_id"],
                                                                   run["run_id"])])
        record = await ended(service, run)

        assert record["status"] == "error"
        error = record["error"]
        assert (error["error"], error["budget"], error["measure"]) == \
            ("BudgetExceeded", "run", "cost_usd")
        assert error["limit"] == limit and error["used"] >= limit
        assert b"event: error" in frames and b"BudgetExceeded" in frames
        # within one model call of the limit: the same loop one call shorter (the stub is
        # deterministic) had not reached it
        steps, cost = await spent(service, run)
        assert steps > 5 and cost == pytest.approx(error["used"])  # it did loop
        shorter = await service.runs.create(
            (await service.records.create_thread(None, {}))[0]["thread_id"],
            turn(LOOP, context={"budget": {"max_steps": steps - 1}}))
        assert (await ended(service, shorter))["error"]["measure"] == "steps"
        assert (await spent(service, shorter))[1] < limit <= cost

        # the thread keeps its checkpoint and takes the next run
        assert (await service.records.get_thread(thread["thread_id"]))["status"] == "error"
        again = await service.runs.create(thread["thread_id"],
                                          turn("What is Redis persistence?"))
        assert (await ended(service, again))["status"] == "success"
        state = await service.threads.get_state(thread["thread_id"])
        texts = [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]
        assert texts == [LOOP, "What is Redis persistence?"]


async def test_a_runs_own_budget_applies_but_never_above_the_operators(
        settings, in_process_service):
    async with in_process_service(with_budgets(settings, run={"max_steps": 6}),
                                  "budget-context") as service:
        async def stopped_at(context: dict[str, Any] | None) -> dict[str, Any]:
            thread, _ = await service.records.create_thread(None, {})
            extra = {"context": context} if context else {}
            run = await service.runs.create(thread["thread_id"], turn(LOOP, **extra))
            record = await ended(service, run)
            assert record["status"] == "error", record
            assert (await spent(service, run))[0] == record["error"]["used"]
            return record["error"]

        own = await stopped_at({"budget": {"max_steps": 3}})
        assert (own["budget"], own["measure"], own["used"], own["limit"]) == \
            ("run", "steps", 3, 3)
        above = await stopped_at({"budget": {"max_steps": 100}})
        assert (above["used"], above["limit"]) == (6, 6)


async def test_spend_is_the_runs_not_the_attempts(settings, in_process_service):
    """A run taken over by another replica goes on from what it had spent: its counters
    are keyed by the run in Redis. Here its first attempt's spend is already there when
    it starts (a delayed run, charged meanwhile as a dead replica's attempt would have)."""
    capped = with_budgets(settings, run={"max_tokens": 2000})
    async with in_process_service(capped, "budget-attempt") as service:
        thread, _ = await service.records.create_thread(None, {})
        run = await service.runs.create(thread["thread_id"],
                                        turn("What is Redis persistence?", after_seconds=1))
        budgets = Budgets(service.redis, capped.budgets)  # as another replica's
        levels = budgets.levels(thread["thread_id"], run["run_id"], None)
        await budgets.charge(levels, 1990, 0.0)  # what the lost attempt had used
        record = await ended(service, run)

        assert record["status"] == "error"
        assert record["error"]["budget"] == "run" and record["error"]["limit"] == 2000
        assert record["error"]["used"] > 2000  # 1990 + the one call it made
        spent = await service.redis.hgetall(spend_key(thread["thread_id"], run["run_id"]))
        assert int(spent[b"steps"]) == 2 and int(spent[b"tokens"]) == record["error"]["used"]


async def test_a_thread_budget_counts_every_run_of_the_thread_on_every_replica(
        settings, in_process_service):
    capped = with_budgets(settings, thread={"max_steps": 5}, run={"max_tokens": 100_000})
    async with in_process_service(capped, "budget-thread") as service, \
            in_process_service(capped, "budget-thread-b") as replica_b:
        thread, _ = await service.records.create_thread(None, {})
        results = []
        for on in (service, replica_b, service, replica_b):  # a plain question: 5 calls
            run = await on.runs.create(thread["thread_id"], turn("What is Redis persistence?"))
            results.append(await ended(on, run))
        assert [r["status"] for r in results] == ["success", "error", "error", "error"]
        assert all(r["error"]["budget"] == "thread" for r in results[1:])
        assert results[1]["error"]["used"] == 5  # spent on the other replica
        other, _ = await service.records.create_thread(None, {})  # another thread: its own
        run = await service.runs.create(other["thread_id"], turn("What is Redis persistence?"))
        assert (await ended(service, run))["status"] == "success"

        # the spend goes with the thread
        pattern = spend_key(thread["thread_id"]) + "*"
        # the thread's counters and its first run's (the others were refused before any)
        assert len([k async for k in service.redis.scan_iter(match=pattern)]) == 2
        await service.threads.delete(thread["thread_id"])
        assert [k async for k in service.redis.scan_iter(match=pattern)] == []


async def test_a_user_over_the_windows_budget_is_refused_429_until_it_resets(
        settings, in_process_service):
    capped = with_budgets(settings, user={"max_steps": 7, "window_s": 3600})
    async with in_process_service(capped, "budget-user") as service, \
            httpx.AsyncClient(transport=httpx.ASGITransport(
                app=build_api(service, AuthSettings(path=AUTH_FILE), LimitsSettings())),
                base_url="http://api", timeout=60) as api:
        async def ask(who: dict[str, str]) -> dict[str, Any] | httpx.Response:
            """The run's record, or the refusal."""
            thread = (await api.post("/threads", json={}, headers=who)).json()["thread_id"]
            answer = await api.post(f"/threads/{thread}/runs/wait", headers=who, json={
                "assistant_id": "supervisor",
                "input": {"messages": [{"role": "user", "content": QUESTION}]}})
            if answer.status_code != 200:
                return answer
            return (await api.get(f"/threads/{thread}/runs", headers=who)).json()[0]

        telemetry.set_meter(service.metrics)  # as the supervisor deployment does
        try:
            first = await ask(ALICE)  # 5 model calls of her 7
            second = await ask(ALICE)  # admitted (5 < 7); stopped before its third call
            refused = await ask(ALICE)
            bob = await ask(BOB)
        finally:
            telemetry.set_meter(None)

    assert first["status"] == "success"
    assert second["status"] == "error"
    assert (second["error"]["budget"], second["error"]["used"]) == ("user", 7)
    assert refused.status_code == 429
    assert "user budget spent: 7 of 7 steps" in refused.json()["detail"]
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert bob["status"] == "success"  # a budget of his own
    # refused: the researcher's call, the supervisor's next one (it hears of the failure),
    # the third run
    assert service.metrics.total("budget_refusals", budget="user", measure="steps") == 3
    assert service.metrics.total("user_spend_usd", user="alice") > 0
    assert service.metrics.total("user_spend_tokens", user="bob") > 0


async def test_the_operators_run_budget_is_read_from_the_environment(
        settings, in_process_service, monkeypatch):
    """``AGENT_CLUSTER_BUDGETS__RUN__MAX_TOKENS=2000 make run`` caps every run."""
    monkeypatch.setenv("AGENT_CLUSTER_BUDGETS__RUN__MAX_TOKENS", "2000")
    from_env = Settings(redis_url=settings.redis_url, model=settings.model.model_dump(),
                        data_dir=settings.data_dir, workspace_dir=settings.workspace_dir)
    assert from_env.budgets.run.max_tokens == 2000
    async with in_process_service(with_budgets(from_env, **from_env.budgets.model_dump()),
                                  "budget-env") as service:
        thread, _ = await service.records.create_thread(None, {})
        record = await ended(service, await service.runs.create(thread["thread_id"],
                                                                turn(LOOP)))
    assert record["status"] == "error"
    assert (record["error"]["measure"], record["error"]["limit"]) == ("tokens", 2000)


async def test_a_runs_budget_stops_a_runaway_on_the_cluster(cluster_url):
    """Over Ray: the researcher on its own replica is refused its call, the supervisor
    (told of the failure) is refused its next one, and the run ends with BudgetExceeded."""
    async with httpx.AsyncClient(base_url=cluster_url, timeout=120) as api:
        thread = (await api.post("/threads", json={})).json()["thread_id"]
        await api.post(f"/threads/{thread}/runs/wait", json={
            "assistant_id": "supervisor", "context": {"budget": {"max_tokens": 2000}},
            "input": {"messages": [{"role": "user", "content": LOOP}]}})
        run = (await api.get(f"/threads/{thread}/runs")).json()[0]
    assert run["status"] == "error", run
    error = run["error"]
    assert (error["error"], error["budget"], error["measure"], error["limit"]) == \
        ("BudgetExceeded", "run", "tokens", 2000)
    assert error["used"] >= 2000
