"""Limits through the HTTP API in one process: body size (413), message length (413), runs
per user per minute (a Redis token bucket: 429 + Retry-After, shared by every replica),
concurrent runs per user and threads per user (429); a refusal stores nothing."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from agents.settings import ApiKey, AuthSettings, LimitsSettings, Settings
from serve_app.api.http_api import build_api

AUTH_FILE = "./tests/langgraph_auth.py:auth"
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}


@pytest.fixture(scope="module")
async def service(settings: Settings, in_process_service):
    async with in_process_service(settings, "limits") as built:
        yield built


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                             timeout=60)


def run(text: str = "hi") -> dict:
    return {"assistant_id": "supervisor",
            "input": {"messages": [{"role": "user", "content": text}]}}


async def test_bodies_past_the_limit_are_413_before_anything_is_read(service):
    app = build_api(service, AuthSettings(path=AUTH_FILE), LimitsSettings(max_body_bytes=4096))
    async with client(app) as api:
        big = {"metadata": {"x": "a" * 5000}}
        refused = await api.post("/threads", json=big, headers=ALICE)
        assert refused.status_code == 413 and "4096" in refused.json()["detail"]

        async def chunks():  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b"x" * 1000

        streamed = await api.post("/threads", content=chunks(), headers={
            **ALICE, "content-type": "application/json"})
        assert streamed.status_code == 413, streamed.text
        before = await api.post("/threads/search", json={"limit": 1000}, headers=ALICE)
        ok = await api.post("/threads", json={"metadata": {"x": "small"}}, headers=ALICE)
        assert ok.status_code == 200
        after = await api.post("/threads/search", json={"limit": 1000}, headers=ALICE)
        assert len(after.json()) == len(before.json()) + 1  # only the small one stored


async def test_a_message_past_the_limit_is_413_and_stores_nothing(service):
    app = build_api(service, AuthSettings(path=AUTH_FILE), LimitsSettings(max_message_chars=50))
    async with client(app) as api:
        tid = (await api.post("/threads", json={}, headers=ALICE)).json()["thread_id"]
        refused = await api.post(f"/threads/{tid}/runs", json=run("x" * 51), headers=ALICE)
        assert refused.status_code == 413 and "max_message_chars" in refused.json()["detail"]
        chat = await api.post("/api/chat", headers=ALICE, json={
            "thread_id": f"t-{uuid.uuid4().hex}", "message": "y" * 51, "stream": False})
        assert chat.status_code == 413
        assert (await api.get(f"/threads/{tid}/runs", headers=ALICE)).json() == []
        state = await api.get(f"/threads/{tid}/state", headers=ALICE)
        assert state.json()["values"] == {}


async def test_runs_per_minute_is_a_shared_token_bucket_per_user(service):
    limits = LimitsSettings(runs_per_minute=6, runs_burst=2, concurrent_runs=0)
    replica_a = build_api(service, AuthSettings(path=AUTH_FILE), limits)
    replica_b = build_api(service, AuthSettings(path=AUTH_FILE), limits)  # same Redis
    async with client(replica_a) as a, client(replica_b) as b:
        tid = (await a.post("/threads", json={}, headers=ALICE)).json()["thread_id"]
        first = await a.post(f"/threads/{tid}/runs/wait", json=run(), headers=ALICE)
        second = await b.post(f"/threads/{tid}/runs/wait", json=run(), headers=ALICE)
        assert first.status_code == second.status_code == 200
        refused = await a.post(f"/threads/{tid}/runs/wait", json=run(), headers=ALICE)
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 10
        assert "runs_per_minute" in refused.json()["detail"]
        runs = (await a.get(f"/threads/{tid}/runs", headers=ALICE)).json()
        assert len(runs) == 2  # the refused run was never stored
        # another user has a bucket of their own
        bob = (await b.post("/threads", json={}, headers=BOB)).json()["thread_id"]
        assert (await b.post(f"/threads/{bob}/runs/wait", json=run(),
                             headers=BOB)).status_code == 200
        await asyncio.sleep(10)  # 6 a minute: one token back every 10 s
        again = await b.post(f"/threads/{tid}/runs/wait", json=run(), headers=ALICE)
        assert again.status_code == 200


async def test_concurrent_runs_and_threads_per_user(service, stub_admin):
    limits = LimitsSettings(concurrent_runs=1, threads_per_user=2, runs_per_minute=0)
    key = uuid.uuid4().hex  # a user of its own: earlier tests' threads do not count
    app = build_api(service, AuthSettings(api_keys=[ApiKey(identity=f"u-{key}", key=key)]),
                    limits)
    BOB = {"x-api-key": key}
    async with client(app) as api:
        one = (await api.post("/threads", json={}, headers=BOB)).json()["thread_id"]
        two = (await api.post("/threads", json={}, headers=BOB)).json()["thread_id"]
        third = await api.post("/threads", json={}, headers=BOB)
        assert third.status_code == 429 and "threads_per_user" in third.json()["detail"]
        chat = await api.post("/api/chat", headers=BOB, json={
            "thread_id": f"t-{uuid.uuid4().hex}", "message": "hi", "stream": False})
        assert chat.status_code == 429  # a run creating a thread counts too

        stub_admin.post("/config", json={"ttft_ms": 1500})
        slow = await api.post(f"/threads/{one}/runs", json=run(), headers=BOB)
        assert slow.status_code == 200
        busy = await api.post(f"/threads/{two}/runs", json=run(), headers=BOB)
        assert busy.status_code == 429 and "concurrent_runs" in busy.json()["detail"]
        assert busy.headers["Retry-After"]
        assert (await api.get(f"/threads/{two}/runs", headers=BOB)).json() == []
        stub_admin.post("/config", json={"ttft_ms": 0})
        await api.get(f"/threads/{one}/runs/{slow.json()['run_id']}/join", headers=BOB)
        after = await api.post(f"/threads/{two}/runs/wait", json=run(), headers=BOB)
        assert after.status_code == 200

        assert (await api.delete(f"/threads/{one}", headers=BOB)).status_code == 204
        assert (await api.post("/threads", json={}, headers=BOB)).status_code == 200
