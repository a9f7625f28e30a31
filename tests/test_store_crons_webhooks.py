"""End to end through ``langgraph_sdk`` on the session's cluster (2 supervisor replicas): the
Store API and agents' long-term memory, webhooks (signed, retried, approvals), crons (one
run per tick across replicas, the missed-tick rule); and, on an in-process API with API
keys, each user's own namespaces and crons."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from conftest import WEBHOOK_SECRET
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

from agents.local.webhook_receiver import signature_ok
from agents.settings import ApiKey, AuthSettings, WebhookSettings
from agents.system import AgentSystem
from serve_app.api.http_api import build_api
from serve_app.resources.api_errors import ApiError
from serve_app.resources.crons import DUE, TICK
from serve_app.resources.service import AgentService
from serve_app.resources.webhooks import check_destination


@pytest.fixture
def client(cluster_url):
    return get_client(url=cluster_url)


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


async def eventually(probe, timeout_s: float = 30.0, every_s: float = 0.2):
    """``probe()``'s first truthy value (polling; no timing is asserted)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every_s)


# store


async def test_store_items_through_the_sdk(client, cluster_url):
    ns = ["h4-store", uuid.uuid4().hex]
    await client.store.put_item(ns, key="a", value={"colour": "blue", "n": 1})
    await client.store.put_item(ns, key="b", value={"colour": "red", "n": 2})
    await client.store.put_item([*ns, "deeper"], key="c", value={"colour": "blue"})
    item = await client.store.get_item(ns, key="a")
    assert item["namespace"] == ns and item["key"] == "a" and item["value"]["colour"] == "blue"
    assert item["created_at"] and item["updated_at"]

    found = await client.store.search_items(ns, filter={"colour": "blue"})
    assert sorted(i["key"] for i in found["items"]) == ["a", "c"]
    assert len((await client.store.search_items(ns, limit=1))["items"]) == 1
    spaces = await client.store.list_namespaces(prefix=ns)
    assert sorted(spaces["namespaces"]) == [ns, [*ns, "deeper"]]
    assert (await client.store.list_namespaces(prefix=ns, max_depth=2))["namespaces"] == [ns]

    with pytest.raises(UnprocessableEntityError):  # no embeddings: no semantic search
        await client.store.search_items(ns, query="blue things")
    await client.store.delete_item(ns, key="a")
    assert await client.store.get_item(ns, key="a") is None  # as LangGraph Platform answers

    async with httpx.AsyncClient(base_url=cluster_url) as http:
        bad = await http.put("/store/items", json={"namespace": ["a.b"], "key": "k",
                                                   "value": {}})
        assert bad.status_code == 422 and "without periods" in bad.json()["detail"]
        unknown = await http.put("/store/items", json={"namespace": ["a"], "key": "k",
                                                       "value": {}, "colour": "x"})
        assert unknown.status_code == 422 and "colour" in json.dumps(unknown.json())


async def test_a_preference_remembered_in_one_thread_is_recalled_in_another(client):
    me, someone_else = f"user-{uuid.uuid4().hex[:8]}", f"user-{uuid.uuid4().hex[:8]}"

    async def ask(text: str, who: str) -> str:
        thread = await client.threads.create()
        out = await client.runs.wait(thread["thread_id"], "supervisor", input=user(text),
                                     config={"configurable": {"user_id": who}})
        return out["messages"][-1]["content"]

    assert "answers in French" in await ask("Remember that I prefer answers in French.", me)
    assert await ask("What do I prefer?", me) == "You told me you prefer: answers in French."
    assert await ask("What do I prefer?", someone_else) == "I do not know your preferences yet."
    memories = await client.store.search_items([me, "memories"])
    assert [i["value"] for i in memories["items"]] == [{"preference": "answers in French"}]


# webhooks


async def test_blocked_webhook_hosts_are_refused():
    strict = WebhookSettings()
    for url, reason in [("http://127.0.0.1:9/x", "loopback IP range"),
                        ("http://localhost/x", "loopback IP range"),
                        ("http://10.1.2.3/x", "private IP range"),
                        ("http://169.254.169.254/latest", "private IP range")]:
        with pytest.raises(ApiError) as refused:
            await check_destination(url, strict)
        assert refused.value.status == 422
        assert refused.value.detail == f"Webhook host blocked: {reason}"
    with pytest.raises(ApiError, match="not an absolute http"):
        await check_destination("ftp://example.com/x", strict)
    allowed = WebhookSettings(allow_private_hosts=True)
    assert await check_destination("http://127.0.0.1:9/x", allowed) == "http://127.0.0.1:9/x"


async def test_run_webhook_gets_the_signed_finished_run(client, webhook_receiver):
    path = f"/runs/{uuid.uuid4().hex}"
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "supervisor",
                                   input=user("How does Redis persistence work?"),
                                   webhook=webhook_receiver.url + path)

    async def delivered():
        return webhook_receiver.at(path)
    [delivery] = await eventually(delivered)
    assert signature_ok(WEBHOOK_SECRET, delivery["headers"], delivery["body"])
    assert not signature_ok("another secret", delivery["headers"], delivery["body"])
    payload = delivery["json"]
    assert payload["run_id"] == run["run_id"] and payload["thread_id"] == thread["thread_id"]
    assert payload["status"] == "success" and "webhook_sent_at" in payload
    assert payload["values"]["messages"][-1]["content"]

    async def recorded():
        record = await client.runs.get(thread["thread_id"], run["run_id"])
        return record.get("webhook_deliveries")
    [attempt] = await eventually(recorded)
    assert attempt["ok"] and attempt["status_code"] == 200 and attempt["attempt"] == 1


async def test_a_failing_receiver_gets_retries_with_backoff(client, webhook_receiver):
    path = f"/fail/{uuid.uuid4().hex}"
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "supervisor", input=user("hello"),
                                   webhook=webhook_receiver.url + path)
    attempts = WebhookSettings().max_attempts

    async def recorded():
        record = await client.runs.get(thread["thread_id"], run["run_id"])
        deliveries = record.get("webhook_deliveries") or []
        return deliveries if len(deliveries) >= attempts else None
    deliveries = await eventually(recorded, timeout_s=60)
    assert [d["attempt"] for d in deliveries] == list(range(1, attempts + 1))
    assert all(not d["ok"] and d["status_code"] == 500 for d in deliveries)
    assert len(webhook_receiver.at(path)) == attempts


async def test_a_pending_approval_fires_the_approval_webhook(client, webhook_receiver):
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], "supervisor",
                                 input=user("Refund $500 to order 42"))
    assert out["__interrupt__"]

    async def notified():
        return [d["json"] for d in webhook_receiver.at("/approvals")
                if d["json"]["thread_id"] == thread["thread_id"]]
    [note] = await eventually(notified)
    assert note["event"] == "approval.pending" and note["tool"] == "issue_refund"
    assert note["args"]["amount"] == 500 and note["args"]["order_id"] == "42"
    assert note["interrupt_id"] == out["__interrupt__"][0]["id"]


# crons


async def test_cron_crud_through_the_sdk(client, cluster_url):
    assistant = f"h4-{uuid.uuid4().hex[:6]}"
    cron = await client.crons.create("supervisor", schedule="0 9 * * 1", input=user("hi"),
                                     metadata={"suite": assistant}, timezone="Europe/Paris")
    assert cron["schedule"] == "0 9 * * 1" and cron["thread_id"] is None
    assert datetime.fromisoformat(cron["next_run_date"]).astimezone(UTC).hour in (7, 8)
    assert cron["payload"]["input"] == user("hi") and cron["enabled"] is True
    thread = await client.threads.create()
    on_thread = await client.crons.create_for_thread(thread["thread_id"], "supervisor",
                                                     schedule="*/5 * * * *",
                                                     metadata={"suite": assistant})
    assert await client.crons.count(metadata={"suite": assistant}) == 2
    found = await client.crons.search(thread_id=thread["thread_id"])
    assert [c["cron_id"] for c in found] == [on_thread["cron_id"]]

    paused = await client.crons.update(cron["cron_id"], enabled=False, schedule="0 10 * * *")
    assert paused["enabled"] is False and paused["next_run_date"] is None
    assert paused["schedule"] == "0 10 * * *"
    await client.crons.delete(cron["cron_id"])
    await client.crons.delete(on_thread["cron_id"])
    assert await client.crons.count(metadata={"suite": assistant}) == 0
    with pytest.raises(NotFoundError):
        await client.crons.delete(cron["cron_id"])
    with pytest.raises(UnprocessableEntityError):
        await client.crons.create("supervisor", schedule="every minute")
    with pytest.raises(UnprocessableEntityError):
        await client.crons.create("supervisor", schedule="* * * * *", timezone="Mars/Base")
    async with httpx.AsyncClient(base_url=cluster_url) as http:
        unknown = await http.post("/runs/crons", json={
            "assistant_id": "supervisor", "schedule": "* * * * *", "colour": "blue"})
        assert unknown.status_code == 422 and "colour" in unknown.json()["detail"]


async def test_a_cron_ticking_on_two_replicas_runs_once_per_tick(client, redis_client,
                                                                 webhook_receiver):
    path = f"/cron/{uuid.uuid4().hex}"
    thread = await client.threads.create()
    cron = await client.crons.create_for_thread(
        thread["thread_id"], "supervisor", schedule="* * * * * */2",  # every 2 s (seconds last)
        input=user("hello"), webhook=webhook_receiver.url + path)

    async def three_ticks():
        return len(webhook_receiver.at(path)) >= 3
    assert await eventually(three_ticks, timeout_s=60)
    await client.crons.delete(cron["cron_id"])
    leases = [k async for k in redis_client.scan_iter(match=f"{TICK}{cron['cron_id']}:*")]
    await asyncio.sleep(1)  # a run created just before the delete may still deliver
    runs = {d["json"]["run_id"]: d["json"]["metadata"]["cron_tick"]
            for d in webhook_receiver.at(path)}
    ticks = list(runs.values())
    assert len(ticks) == len(set(ticks))  # no tick ran twice
    assert len(runs) == len(webhook_receiver.at(path)) <= len(leases)
    assert all(datetime.fromisoformat(t).second % 2 == 0 for t in ticks)


async def test_ticks_missed_while_down_run_the_latest_once(client, redis_client):
    cron = await client.crons.create("supervisor", schedule="* * * * *", input=user("hi"),
                                     on_run_completed="delete")
    cron_id = cron["cron_id"]
    # As if the cluster had been down for five minutes: five ticks were missed.
    now = time.time()
    latest_missed = int(now // 60 * 60)
    await redis_client.zadd(DUE, {cron_id: now - 300})

    async def leases():
        found = [k.decode() async for k in redis_client.scan_iter(match=f"{TICK}{cron_id}:*")]
        return sorted(int(k.rsplit(":", 1)[1]) // 1000 for k in found)

    ran = await eventually(leases)
    # The replica reads its own clock: a minute may have turned since ``now``.
    latest_by_then = int(time.time() // 60 * 60)
    await asyncio.sleep(2.5)  # a few more rounds of both replicas' loops
    ran = await leases()
    [current] = [c for c in await client.crons.search(limit=1000) if c["cron_id"] == cron_id]
    await client.crons.delete(cron_id)
    # the latest missed tick ran (a lease a tick: once); the older ones were skipped
    assert latest_missed <= ran[0] <= latest_by_then, (ran, latest_missed, latest_by_then)
    assert datetime.fromisoformat(current["next_run_date"]).timestamp() > now


# with auth: each user's store and crons


@pytest.fixture(scope="module")
async def in_process(settings):
    """The API's service in this process over the session's Redis and stub (no Ray)."""
    async with await AgentSystem.create(settings) as system:
        service = AgentService.in_process(system, replica_id=f"h4-{uuid.uuid4().hex[:6]}")
        service.executor.start()
        yield service
        await service.aclose()


def sdks_for(service, auth: AuthSettings, *credentials: dict) -> list:
    """One SDK client per user, each given as ``get_client``'s keywords."""
    app = build_api(service, auth)
    sdks = []
    for credential in credentials:
        sdk = get_client(url="http://api", **credential)
        sdk.http.client._transport = httpx.ASGITransport(app=app)
        sdks.append(sdk)
    return sdks


@pytest.fixture(scope="module")
def keyed_sdks(in_process):
    """Two users of the built-in API keys."""
    return sdks_for(in_process, AuthSettings(api_keys=[
        ApiKey(identity="erin", key="erin-key"), ApiKey(identity="frank", key="frank-key")]),
        {"api_key": "erin-key"}, {"api_key": "frank-key"})


async def test_with_auth_namespaces_and_crons_are_per_user(keyed_sdks):
    erin, frank = keyed_sdks
    await erin.store.put_item(["notes"], key="n", value={"text": "erin's"})
    assert (await erin.store.get_item(["notes"], key="n"))["namespace"] == ["erin", "notes"]
    assert await frank.store.get_item(["notes"], key="n") is None
    assert await frank.store.get_item(["erin", "notes"], key="n") is None  # frank's own erin
    assert (await frank.store.search_items(["notes"]))["items"] == []
    assert ["erin", "notes"] in (await erin.store.list_namespaces())["namespaces"]
    assert (await frank.store.list_namespaces())["namespaces"] == []

    thread = await erin.threads.create()
    out = await erin.runs.wait(thread["thread_id"], "supervisor",
                               input=user("Remember that I prefer short answers."),
                               config={"configurable": {"user_id": "frank"}})  # not obeyed
    assert "short answers" in out["messages"][-1]["content"]
    memories = await erin.store.search_items(["memories"])
    assert [i["namespace"] for i in memories["items"]] == [["erin", "memories"]]
    assert (await frank.store.search_items(["memories"]))["items"] == []

    cron = await erin.crons.create("supervisor", schedule="0 9 * * *", input=user("hi"))
    assert cron["user_id"] == "erin"
    assert await frank.crons.count() == 0 and await erin.crons.count() == 1
    with pytest.raises(NotFoundError):
        await frank.crons.delete(cron["cron_id"])
    await erin.crons.delete(cron["cron_id"])


async def test_an_auth_file_without_a_store_handler_still_scopes_namespaces(in_process):
    """tests/langgraph_auth.py has one handler for every resource (owner metadata), none
    for the store: namespaces are per user; crons carry their owner."""
    alice, bob = sdks_for(in_process, AuthSettings(path="./tests/langgraph_auth.py:auth"),
                          {"api_key": None, "headers": {"Authorization": "Bearer alice-token"}},
                          {"api_key": None, "headers": {"Authorization": "Bearer bob-token"}})
    await alice.store.put_item(["drafts"], key="d", value={"text": "alice's"})
    assert (await alice.store.search_items(["drafts"]))["items"][0]["namespace"] == \
        ["alice", "drafts"]
    assert await bob.store.get_item(["alice", "drafts"], key="d") is None
    cron = await alice.crons.create("supervisor", schedule="0 9 * * *", input=user("hi"))
    assert cron["metadata"]["owner"] == "alice"
    assert [c["cron_id"] for c in await alice.crons.search()] == [cron["cron_id"]]
    assert await bob.crons.search() == []
    await alice.crons.delete(cron["cron_id"])
