"""Hostile input against the served API (one uvicorn process in a thread, no Ray), behind
the test auth file: Schemathesis generates requests for every route of the served OpenAPI
schema (bounded: a few examples per operation, ~1-2 minutes), then hand-written cases.
Every answer must be below 500 and every error a JSON ``{"detail"}``."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from agents.local.process import free_port
from agents.settings import AuthSettings, LimitsSettings, Settings
from agents.system import AgentSystem, Runtime
from serve_app.api.http_api import build_api
from serve_app.resources.approvals import RecordedApprovals
from serve_app.resources.service import AgentService

AUTH_FILE = "./tests/langgraph_auth.py:auth"
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
EXAMPLES = 6  # per operation: ~40 operations, bounded for CI


@pytest.fixture(scope="module")
def served(settings: Settings) -> str:
    """The API in a uvicorn of its own (its own loop and Redis connections)."""
    port, holder = free_port(), {}

    # admission control would shed a burst of generated runs with 503: not under test here
    roomy = settings.model_copy(update={"api": settings.api.model_copy(update={
        "max_queued_runs": 100_000, "max_queue_wait_s": 3600})})

    async def serve() -> None:
        runtime = await Runtime.create(roomy)
        runtime.approval_verifier = RecordedApprovals(runtime.redis)
        service = AgentService.in_process(AgentSystem(runtime),
                                          replica_id=f"fuzz-{uuid.uuid4().hex[:6]}")
        service.executor.start()
        app = build_api(service, AuthSettings(path=AUTH_FILE),
                        LimitsSettings(max_body_bytes=65536, runs_per_minute=600,
                                       runs_burst=100))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="error", access_log=False))
        holder["server"] = server
        try:
            await server.serve()
        finally:
            await service.aclose()
            await runtime.aclose()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url
    holder["server"].should_exit = True
    thread.join(30)


def assert_json_error(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and "detail" in body, response.text[:300]


def test_every_route_survives_generated_input(served):
    """Each operation of the served schema, ``EXAMPLES`` generated requests each."""
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                             database=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call(base_url=served, headers=ALICE, timeout=60)
            assert_json_error(response)

        try:
            check()
        except AssertionError as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert failures == []


# hand-written hostile cases


def raw(served: str, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {**ALICE, **kwargs.pop("headers", {})}
    return httpx.request(method, f"{served}{path}", headers=headers, timeout=60, **kwargs)


def test_deep_json_huge_strings_invalid_utf8_and_wrong_types(served):
    deep = "[" * 100_000 + "]" * 100_000
    for body in [deep.encode(), b'{"metadata": ' + b"{\"a\": " * 5000 + b"1" + b"}" * 5001,
                 b"\xff\xfe{\"metadata\": 1}", b'{"metadata": "\xc3\x28"}', b"not json",
                 b"", b"null", b"[]", b'{"thread_id": 5, "metadata": []}']:
        answer = raw(served, "POST", "/threads", content=body,
                     headers={"content-type": "application/json"})
        assert_json_error(answer)
        assert answer.status_code in (200, 400, 413, 422), (body[:40], answer.text[:200])
    huge = raw(served, "POST", "/api/chat", json={"thread_id": "x", "message": "a" * 70_000})
    assert huge.status_code == 413
    for body in [{"assistant_id": 7}, {"assistant_id": "supervisor", "input": "text"},
                 {"assistant_id": "supervisor", "stream_mode": {"a": 1}},
                 {"assistant_id": "supervisor", "command": {"goto": {"node": 5}}},
                 {"assistant_id": "supervisor", "config": {"recursion_limit": -1}},
                 {"assistant_id": "nope"}]:
        assert_json_error(raw(served, "POST", "/runs/wait", json=body))


def test_odd_ids_and_forged_event_ids(served):
    for tid in ["%00", "a%7Db", "%7B%7D", "..%2F..", "x" * 3000, "%F0%9F%92%A5", "%FF"]:
        answer = raw(served, "GET", f"/threads/{tid}")
        assert_json_error(answer)
        assert answer.status_code == 404, (tid, answer.status_code)
    tid = raw(served, "POST", "/threads", json={}).json()["thread_id"]
    done = raw(served, "POST", f"/threads/{tid}/runs/wait",
               json={"assistant_id": "supervisor",
                     "input": {"messages": [{"role": "user", "content": "hi"}]}})
    assert done.status_code == 200
    rid = raw(served, "GET", f"/threads/{tid}/runs").json()[0]["run_id"]
    for forged in ["abc", "-1", "1-2-3", "99999999999999999999999-0", "$", ">", "+", "0-x"]:
        answer = raw(served, "GET", f"/threads/{tid}/runs/{rid}/stream",
                     headers={"Last-Event-ID": forged})
        assert answer.status_code == 422, (forged, answer.status_code, answer.text[:200])
        assert_json_error(answer)
    future = raw(served, "GET", f"/threads/{tid}/runs/{rid}/stream",
                 headers={"Last-Event-ID": "99999999999999-0"})
    assert future.status_code == 200 and "event: end" in future.text  # told from the record
    # another user's run, even with its exact ids: as if absent
    other = raw(served, "GET", f"/threads/{tid}/runs/{rid}/stream", headers=BOB)
    assert other.status_code == 404


def test_replayed_approval_and_unknown_decisions(served):
    body = {"thread_id": f"t-{uuid.uuid4().hex}", "message": "Refund $500 to order 42",
            "stream": False}
    assert raw(served, "POST", "/api/chat", json=body).status_code == 202
    tid = body["thread_id"]
    carol = {"Authorization": "Bearer carol-token"}
    for bad in [{"action": "maybe"}, {"action": "edit"}, {"action": "approve", "args": "x"},
                {"action": "approve", "interrupt_id": "not-one"}]:
        answer = raw(served, "POST", "/api/approve", json={"thread_id": tid, **bad},
                     headers=carol)
        assert answer.status_code in (409, 422), (bad, answer.text[:200])
        assert_json_error(answer)
    first = raw(served, "POST", "/api/approve", json={"thread_id": tid, "action": "approve"},
                headers=carol)
    assert first.status_code == 200
    replay = raw(served, "POST", "/api/approve", json={"thread_id": tid, "action": "approve"},
                 headers=carol)
    assert replay.status_code == 409
