"""The run executor in one process (no Ray): what it does when a run outlives its deadline."""

from __future__ import annotations

import asyncio

import pytest

from agents.settings import Settings
from agents.system import AgentSystem
from serve_app.schemas import RunCreate
from serve_app.service import AgentService


@pytest.fixture
async def service(settings: Settings):
    """The API's service over in-process graphs, with a 1 s run deadline."""
    short = settings.model_copy(update={"api": settings.api.model_copy(
        update={"run_timeout_s": 1.0})})
    async with await AgentSystem.create(short) as system:
        built = AgentService.in_process(system, replica_id="test-replica")
        built.executor.start()
        yield built
        await built.executor.aclose()


def user(text: str) -> RunCreate:
    return RunCreate.model_validate({
        "assistant_id": "supervisor", "stream_mode": ["values"],
        "input": {"messages": [{"role": "user", "content": text}]}})


async def test_a_run_past_its_deadline_ends_timeout_and_the_thread_goes_on(service, stub_admin):
    thread, _ = await service.records.create_thread(None, {})
    stub_admin.post("/config", json={"ttft_ms": 3000})  # every model call takes 3 s
    run = await service.create_run(thread["thread_id"], user("What is Redis persistence?"))
    frames = b"".join([chunk async for chunk in service.stream_events(run["run_id"])])
    ended = await service.wait_for_end(run["run_id"])

    assert ended["status"] == "timeout"
    assert ended["error"]["error"] == "RunTimeout"
    assert b"event: error" in frames and b"RunTimeout" in frames
    assert (await service.records.get_thread(thread["thread_id"]))["status"] == "error"

    stub_admin.post("/config", json={"ttft_ms": 0})
    again = await service.create_run(thread["thread_id"], user("What is Redis persistence?"))
    finished = await asyncio.wait_for(service.wait_for_end(again["run_id"]), 30)
    assert finished["status"] == "success"
    assert (await service.records.get_thread(thread["thread_id"]))["status"] == "idle"
