"""One road for every run (``serve_app.resources.run_road``), here as a cron's tick takes it:
in one process over ASGI, with API keys, a tick runs as the cron's owner, counts against the
owner's limits and is refused as the owner's own run would be (per-user concurrent runs:
429), storing nothing when refused."""

from __future__ import annotations

import uuid

import httpx
import pytest

from agents.settings import ApiKey, AuthSettings, LimitsSettings, Settings
from serve_app.api.http_api import build_api
from serve_app.api.root import compose
from serve_app.resources.api_errors import ApiError
from serve_app.resources.scheduled import cron_runs

TICK = "2027-01-01T00:00:00+00:00"


@pytest.fixture(scope="module")
async def service(settings: Settings, in_process_service):
    async with in_process_service(settings, "road") as built:
        yield built


def run() -> dict:
    return {"assistant_id": "supervisor",
            "input": {"messages": [{"role": "user", "content": "What is Redis persistence?"}]}}


async def test_a_crons_runs_count_against_its_owner_and_are_refused_like_theirs(
        service, settings, stub_admin):
    key = uuid.uuid4().hex  # a user of its own: no other test's runs count
    replica = compose(service, settings, AuthSettings(api_keys=[ApiKey(identity=f"u-{key}",
                                                                       key=key)]),
                      LimitsSettings(concurrent_runs=1, runs_per_minute=0))
    tick = cron_runs(replica.road)  # what each replica's tick loop calls
    owner = {"x-api-key": key}
    transport = httpx.ASGITransport(app=build_api(replica))
    async with httpx.AsyncClient(transport=transport, base_url="http://api",
                                 timeout=60) as api:
        cron_thread = (await api.post("/threads", json={}, headers=owner)).json()["thread_id"]
        own_thread = (await api.post("/threads", json={}, headers=owner)).json()["thread_id"]
        made = await api.post(f"/threads/{cron_thread}/runs/crons", headers=owner,
                              json={**run(), "schedule": "0 0 1 1 *"})  # yearly: never due
        assert made.status_code == 200, made.text
        cron = await replica.crons.get(made.json()["cron_id"])

        # the owner has a run in progress: the tick is refused as their second run would be
        stub_admin.post("/config", json={"ttft_ms": 1500})
        slow = (await api.post(f"/threads/{own_thread}/runs", json=run(), headers=owner)).json()
        with pytest.raises(ApiError) as refused:
            await tick(cron, TICK)
        assert refused.value.status == 429 and "concurrent_runs" in refused.value.detail
        assert (await api.get(f"/threads/{cron_thread}/runs", headers=owner)).json() == []
        stub_admin.post("/config", json={"ttft_ms": 0})
        await api.get(f"/threads/{own_thread}/runs/{slow['run_id']}/join", headers=owner)

        # the tick's run is the owner's: while it runs, the owner's own run is refused
        stub_admin.post("/config", json={"ttft_ms": 1500})
        ticked = await tick(cron, TICK)
        assert ticked["metadata"]["cron_id"] == cron["cron_id"]
        assert ticked["metadata"]["owner"] == f"u-{key}"  # the auth handler stamped it
        busy = await api.post(f"/threads/{own_thread}/runs", json=run(), headers=owner)
        assert busy.status_code == 429 and "concurrent_runs" in busy.json()["detail"]
        stub_admin.post("/config", json={"ttft_ms": 0})
        joined = await api.get(f"/threads/{cron_thread}/runs/{ticked['run_id']}/join",
                               headers=owner)
        assert joined.status_code == 200

        assert len((await api.get(f"/threads/{cron_thread}/runs", headers=owner)).json()) == 1
        assert (await api.delete(f"/runs/crons/{cron['cron_id']}",
                                 headers=owner)).status_code == 204
