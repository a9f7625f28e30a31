"""LangGraph Platform's API beyond the core flow, through ``langgraph_sdk`` against the real
cluster: assistants, runtime context, breakpoints, branching, thread and run extras, run
options, and no field silently ignored."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError

from agents.settings import AuthSettings
from agents.system import AgentSystem
from serve_app.api.http_api import build_api
from serve_app.resources.service import AgentService


@pytest.fixture
def client(cluster_url):
    return get_client(url=cluster_url)


@pytest.fixture
async def http(cluster_url):
    async with httpx.AsyncClient(base_url=cluster_url, timeout=60) as plain:
        yield plain


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


def last_message(values: dict) -> dict:
    return values["messages"][-1]


def sdk_over(service: AgentService):
    """``langgraph_sdk`` over an in-process service's API (ASGI, no auth)."""
    sdk = get_client(url="http://api", api_key=None)
    sdk.http.client._transport = httpx.ASGITransport(app=build_api(service, AuthSettings()))
    return sdk


# assistants
async def test_assistant_lifecycle_versions_search_and_count(client):
    marker = uuid.uuid4().hex
    created = await client.assistants.create(
        "supervisor", name=f"helper {marker}", config={"tags": ["a"]},
        context={"locale": "fr-FR"}, metadata={"marker": marker}, description="first")
    aid = created["assistant_id"]
    try:
        assert created["version"] == 1 and created["context"] == {"locale": "fr-FR"}
        assert (await client.assistants.get(aid))["name"] == f"helper {marker}"
        again = await client.assistants.create("supervisor", assistant_id=aid,
                                               if_exists="do_nothing")
        assert again["version"] == 1
        with pytest.raises(ConflictError):
            await client.assistants.create("supervisor", assistant_id=aid)

        updated = await client.assistants.update(aid, description="second",
                                                 metadata={"marker": marker, "v": 2})
        assert updated["version"] == 2 and updated["description"] == "second"
        assert updated["context"] == {"locale": "fr-FR"}  # fields not sent are kept
        versions = await client.assistants.get_versions(aid)
        assert [v["version"] for v in versions] == [2, 1]
        assert (await client.assistants.set_latest(aid, 1))["description"] == "first"
        assert (await client.assistants.get(aid))["version"] == 1

        found = await client.assistants.search(metadata={"marker": marker})
        assert [a["assistant_id"] for a in found] == [aid]
        assert [a["assistant_id"] for a in await client.assistants.search(name=marker)] == [aid]
        assert await client.assistants.count(metadata={"marker": marker}) == 1
        assert await client.assistants.count(graph_id="coder", metadata={"marker": marker}) == 0
        names = [a["name"] for a in await client.assistants.search(
            sort_by="name", sort_order="asc", limit=100)]
        assert names == sorted(names)
        selected = await client.assistants.search(metadata={"marker": marker},
                                                  select=["assistant_id", "version"])
        assert selected == [{"assistant_id": aid, "version": 1}]
        page = await client.assistants.search(limit=2, response_format="object")
        assert len(page["assistants"]) == 2 and page["next"] == "2"  # 4 built-in, and more
        last = await client.assistants.search(metadata={"marker": marker},
                                              response_format="object")
        assert [a["assistant_id"] for a in last["assistants"]] == [aid] and last["next"] is None
    finally:
        await client.assistants.delete(aid)
    with pytest.raises(NotFoundError):
        await client.assistants.get(aid)


async def test_built_in_assistants_stay_fixed(client):
    [supervisor] = await client.assistants.search(graph_id="supervisor", limit=1)
    assert supervisor["version"] == 1
    with pytest.raises(ConflictError):
        await client.assistants.delete(supervisor["assistant_id"])
    with pytest.raises(ConflictError):
        await client.assistants.update(supervisor["assistant_id"], name="mine")
    with pytest.raises(UnprocessableEntityError):  # no such graph
        await client.assistants.create("nonexistent")
    with pytest.raises(UnprocessableEntityError):  # the graphs' context_schema refuses it
        await client.assistants.create("supervisor", context={"colour": "red"})


async def test_a_run_uses_its_assistants_context_under_its_own(client):
    assistant = await client.assistants.create("supervisor", context={"model": "from-assistant"},
                                               config={"tags": ["from-assistant"]})
    try:
        thread = await client.threads.create()
        tid = thread["thread_id"]
        out = await client.runs.wait(tid, assistant["assistant_id"],
                                     input=user("What did I ask before?"))
        # the stub model answers as whichever model it was asked for
        assert last_message(out)["response_metadata"]["model_name"] == "from-assistant"
        out = await client.runs.wait(tid, assistant["assistant_id"],
                                     input=user("What did I ask before?"),
                                     context={"model": "from-run"},
                                     config={"tags": ["from-run"]})
        assert last_message(out)["response_metadata"]["model_name"] == "from-run"
        [run, first] = await client.runs.list(tid)
        assert run["assistant_id"] == assistant["assistant_id"]
        assert run["kwargs"]["context"] == {"model": "from-run"}
        assert first["kwargs"]["config"]["tags"] == ["from-assistant"]  # the assistant's config
        assert run["kwargs"]["config"]["tags"] == ["from-assistant", "from-run"]  # and the run's
    finally:
        await client.assistants.delete(assistant["assistant_id"])


async def test_the_context_reaches_the_specialists_too(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    await client.runs.wait(tid, "supervisor", input=user("What is Redis persistence?"),
                           context={"model": "context-model"})
    [run] = await client.runs.list(tid)
    assert set(run["usage"]["by_model"]) == {"context-model"}  # supervisor and researcher


async def test_the_contexts_temperature_and_locale_reach_the_model(client, stub_admin):
    """Every model call of the run (supervisor and specialist) gets the context's
    temperature and a system prompt naming its locale; a run without them gets neither."""
    tid = (await client.threads.create())["thread_id"]

    async def calls_of_a_run(**context) -> list[dict]:
        started = time.time()
        await client.runs.wait(tid, "supervisor", input=user("What is Redis persistence?"),
                               **context)
        return [c for c in stub_admin.get("/stats").json()["calls"] if c["started"] >= started]

    calls = await calls_of_a_run(context={"temperature": 0.3, "locale": "fr-FR"})
    assert {call["role"] for call in calls} >= {"supervisor", "researcher"}, calls
    assert all(call["temperature"] == 0.3 for call in calls), calls
    assert all(any("fr-FR" in text for text in call["system"]) for call in calls), calls
    calls = await calls_of_a_run()
    assert calls and not any(call["temperature"] == 0.3 or
                             any("fr-FR" in text for text in call["system"]) for call in calls)


# no field silently ignored
SDK_RUN_FIELDS = {  # every field langgraph_sdk's runs.create/stream/wait may send
    "context": {"locale": "fr-FR"},
    "interrupt_before": ["worker"],
    "interrupt_after": "*",
    "feedback_keys": ["helpful"],
    "durability": "sync",
    "checkpoint_during": False,
    "after_seconds": 0,
    "strict_resume": True,
    "stream_resumable": True,
    "metadata": {"kind": "field-test"},
    "config": {"tags": ["field-test"]},
    "stream_subgraphs": True,
    "multitask_strategy": "enqueue",
    "on_completion": "keep",
    "on_disconnect": "continue",
    "if_not_exists": "create",
    "stream_mode": ["values", "updates"],
    "webhook": "<the session's webhook receiver>",
}
RECORDED_AS = {"checkpoint_during": ("durability", "exit")}  # the deprecated form
REFUSED = {"langsmith_tracer": {"project_name": "x"}, "strict_resume": False,
           "webhook": "not a url", "interrupt_before": ["nope"], "context": {"colour": "red"},
           "durability": "never", "unknown_field": 1}


@pytest.mark.parametrize("field", sorted(SDK_RUN_FIELDS))
async def test_each_run_field_is_recorded_on_the_run(http, webhook_receiver, field):
    value = SDK_RUN_FIELDS[field]
    if field == "webhook":
        value = f"{webhook_receiver.url}/platform-api-fields"
    tid = str(uuid.uuid4())
    path = "/runs" if field == "on_completion" else f"/threads/{tid}/runs"  # thread-less only
    response = await http.post(path, json={
        "assistant_id": "supervisor", "input": user("What did I ask before?"),
        "if_not_exists": "create", field: value})
    assert response.status_code == 200, response.text
    run = response.json()
    tid = run["thread_id"]
    name, expected = RECORDED_AS.get(field, (field, value))
    recorded = {**run, **run["kwargs"]}
    if name == "config":
        assert recorded["config"]["tags"] == value["tags"]
    elif name == "stream_resumable":  # always resumable: events have ids
        await http.get(f"/threads/{tid}/runs/{run['run_id']}/join")
        stream = await http.get(f"/threads/{tid}/runs/{run['run_id']}/stream")
        assert "\nid: " in stream.text or stream.text.startswith("id: ")
    elif name == "strict_resume":  # a resume with nothing pending is refused
        await http.get(f"/threads/{tid}/runs/{run['run_id']}/join")
        refused = await http.post(f"/threads/{tid}/runs", json={
            "assistant_id": "supervisor", "command": {"resume": "x"}, field: value})
        assert refused.status_code == 409
    elif name in ("on_disconnect", "if_not_exists"):  # used at once, not stored
        assert run["thread_id"] == tid
    else:
        assert recorded[name] == expected
    await http.get(f"/threads/{tid}/runs/{run['run_id']}/join")


@pytest.mark.parametrize("field", sorted(REFUSED))
async def test_unsupported_or_invalid_run_fields_are_refused_by_name(http, field):
    response = await http.post("/runs", json={
        "assistant_id": "supervisor", "input": user("hi"), field: REFUSED[field]})
    assert response.status_code == 422, response.text
    assert field in response.text


async def test_every_body_refuses_unknown_fields(http):
    for method, path, body in [("POST", "/threads", {"bogus": 1}),
                               ("POST", "/threads/search", {"bogus": 1}),
                               ("POST", "/assistants/search", {"bogus": 1}),
                               ("POST", "/assistants", {"graph_id": "supervisor", "bogus": 1})]:
        response = await http.request(method, path, json=body)
        assert response.status_code == 422 and "bogus" in response.text, (path, response.text)


async def test_the_sdks_query_and_header_options_have_an_effect_or_a_422(client, http):
    thread = await client.threads.create(ttl=60)
    tid = thread["thread_id"]
    assert (await client.threads.get(tid, include=["ttl"]))["ttl"]["ttl"] == 60
    assert await client.threads.update(tid, metadata={"k": "v"}, return_minimal=True) is None
    assert (await client.threads.get(tid))["metadata"]["k"] == "v"
    run = await client.runs.create(tid, "supervisor", input=user("What is Redis persistence?"),
                                   stream_mode=["values", "updates", "messages-tuple"])
    events = [part.event async for part in client.runs.join_stream(
        tid, run["run_id"], stream_mode="updates")]
    assert "updates" in events and not {"values", "messages"} & set(events), events
    everything = {part.event async for part in client.runs.join_stream(tid, run["run_id"])}
    assert {"values", "updates", "messages"} <= everything
    refused = await http.get(f"/threads/{tid}/runs/{run['run_id']}/stream",
                             params={"stream_mode": "debug"})  # not one of the run's
    assert refused.status_code == 422 and "stream_mode" in refused.text
    refused = await http.get(f"/threads/{tid}", params={"include": "ttl,colour"})
    assert refused.status_code == 422 and "include" in refused.text
    assistant = await client.assistants.create("supervisor")
    refused = await http.delete(f"/assistants/{assistant['assistant_id']}",
                                params={"delete_threads": "true"})
    assert refused.status_code == 422 and "delete_threads" in refused.text
    await client.assistants.delete(assistant["assistant_id"])
    await client.threads.delete(tid)


# breakpoints and branching
@pytest.mark.parametrize("breakpoint_, stopped_before", [
    ({"interrupt_before": ["worker"]}, ["worker"]),
    ({"interrupt_after": ["worker"]}, ["supervisor"]),  # the researcher answered; not yet
], ids=["interrupt_before", "interrupt_after"])
async def test_a_breakpoint_stops_the_run_and_a_run_without_input_resumes(
        client, breakpoint_, stopped_before):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    await client.runs.wait(tid, "supervisor", input=user("What is Redis persistence?"),
                           **breakpoint_)
    state = await client.threads.get_state(tid)
    assert state["next"] == stopped_before
    assert (await client.threads.get(tid))["status"] == "interrupted"
    out = await client.runs.wait(tid, "supervisor", input=None)
    assert "redis-persistence" in last_message(out)["content"]
    assert (await client.threads.get_state(tid))["next"] == []


async def test_an_assistants_breakpoints_apply_to_its_runs(http, client):
    created = await http.post("/assistants", json={"graph_id": "supervisor",
                                                   "interrupt_before": ["worker"]})
    assert created.status_code == 200, created.text
    aid = created.json()["assistant_id"]
    try:
        thread = await client.threads.create()
        await client.runs.wait(thread["thread_id"], aid, input=user("What is Redis?"))
        assert (await client.threads.get_state(thread["thread_id"]))["next"] == ["worker"]
        refused = await http.post("/assistants", json={"graph_id": "supervisor",
                                                       "interrupt_after": ["nowhere"]})
        assert refused.status_code == 422 and "interrupt_after" in refused.text
    finally:
        await client.assistants.delete(aid)


async def test_a_branch_from_an_old_checkpoint_continues_from_there_and_history_stays(client,
                                                                                     http):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    await client.runs.wait(tid, "supervisor", input=user("What did I ask before?"))
    after_first = (await client.threads.get_state(tid))["checkpoint"]
    second = await client.runs.wait(tid, "supervisor", input=user("What did I ask before?"))
    assert len(second["messages"]) == 4
    original = (await client.threads.get_state(tid))["checkpoint"]

    branch = await client.runs.wait(tid, "supervisor", checkpoint=after_first,
                                    input=user("What did I ask before, on this branch?"))
    assert len(branch["messages"]) == 4  # the first turn, then this one: not the second
    assert branch["messages"][2]["content"] == "What did I ask before, on this branch?"
    kept = await client.threads.get_state(tid, checkpoint_id=original["checkpoint_id"])
    assert kept["values"]["messages"][2]["content"] == "What did I ask before?"
    flat = await client.runs.wait(tid, "supervisor", checkpoint_id=after_first["checkpoint_id"],
                                  input=user("And on a second branch?"))  # the older form
    assert len(flat["messages"]) == 4 and flat["messages"][2]["content"] == \
        "And on a second branch?"
    refused = await http.post(f"/threads/{tid}/runs/wait", json={  # another thread's
        "assistant_id": "supervisor", "input": user("hi"),
        "checkpoint": {**after_first, "thread_id": str(uuid.uuid4())}})
    assert refused.status_code == 422 and "checkpoint.thread_id" in refused.text


# threads and runs extras
async def test_thread_count_copy_and_search_by_ids_values_with_sort_and_select(client):
    marker = uuid.uuid4().hex
    made = [await client.threads.create(metadata={"marker": marker, "n": n}) for n in range(3)]
    ids = [t["thread_id"] for t in made]
    await client.runs.wait(ids[0], "supervisor", input=user("What did I ask before?"))
    assert await client.threads.count(metadata={"marker": marker}) == 3
    assert await client.threads.count(metadata={"marker": marker}, status="idle") == 3

    copy = await client.threads.copy(ids[0])
    assert copy["thread_id"] not in ids and copy["metadata"]["marker"] == marker
    copied = await client.threads.get_state(copy["thread_id"])
    original = await client.threads.get_state(ids[0])
    assert copied["values"] == original["values"]
    assert len(await client.threads.get_history(copy["thread_id"], limit=100)) == \
        len(await client.threads.get_history(ids[0], limit=100))

    found = await client.threads.search(ids=ids[1:], limit=10)
    assert {t["thread_id"] for t in found} == set(ids[1:])
    with_values = await client.threads.search(metadata={"marker": marker},
                                              values={"steps": original["values"]["steps"]})
    assert {t["thread_id"] for t in with_values} == {ids[0], copy["thread_id"]}
    ascending = await client.threads.search(metadata={"marker": marker}, sort_by="created_at",
                                            sort_order="asc", select=["thread_id"])
    assert [t["thread_id"] for t in ascending] == [*ids, copy["thread_id"]]
    assert all(set(t) == {"thread_id"} for t in ascending)


async def test_runs_list_by_status_cancel_many_and_create_batch(client, stub_admin):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    batch = await client.runs.create_batch([
        {"thread_id": tid, "assistant_id": "supervisor", "input": user("What did I ask before?")},
        {"assistant_id": "supervisor", "input": user("What did I ask before?")},
    ])
    assert [r["thread_id"] == tid for r in batch] == [True, False]
    for run in batch:
        await client.runs.join(run["thread_id"], run["run_id"])
    stub_admin.post("/config", json={"ttft_ms": 5000})
    slow = await client.runs.create(tid, "supervisor", input=user("What is Redis?"))
    async for part in client.runs.join_stream(tid, slow["run_id"]):
        assert part.event == "metadata"  # it runs (a cancel while it starts may be lost)
        break
    await client.runs.cancel_many(thread_id=tid, run_ids=[slow["run_id"]])
    await client.runs.join(tid, slow["run_id"])
    assert (await client.runs.get(tid, slow["run_id"]))["status"] == "interrupted"
    assert [r["run_id"] for r in await client.runs.list(tid, status="interrupted")] == \
        [slow["run_id"]]
    assert [r["run_id"] for r in await client.runs.list(tid, status="success")] == \
        [batch[0]["run_id"]]
    assert await client.runs.list(tid, select=["run_id"], limit=1) == [{"run_id": slow["run_id"]}]


# run options
async def test_after_seconds_delays_the_start(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "supervisor", input=user("What did I ask before?"),
                                   after_seconds=3)
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "pending"
    await client.runs.join(tid, run["run_id"])
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"


async def test_a_delayed_run_outlives_the_replica_that_accepted_it(settings):
    """``after_seconds`` is kept in Redis, not in a replica: the one that accepted the run
    stops before it is due, nothing runs it while none is up (past its time), and a
    replica started afterwards on the same pool runs it."""
    replica_id = f"delayed-{uuid.uuid4().hex[:6]}"
    async with await AgentSystem.create(settings) as system:
        accepting = AgentService.in_process(system, replica_id)
        accepting.executor.start()
        sdk = sdk_over(accepting)
        tid = (await sdk.threads.create())["thread_id"]
        due = time.time() + 2
        run = await sdk.runs.create(tid, "supervisor", input=user("What did I ask before?"),
                                    after_seconds=2)
        await accepting.aclose()  # gone before the run is due
        await asyncio.sleep(max(0.0, due + 1 - time.time()))
        assert (await sdk.runs.get(tid, run["run_id"]))["status"] == "pending"
        restarted = AgentService.in_process(system, replica_id)  # the same pool, anew
        restarted.executor.start()
        try:
            sdk = sdk_over(restarted)
            await sdk.runs.join(tid, run["run_id"])
            assert (await sdk.runs.get(tid, run["run_id"]))["status"] == "success"
        finally:
            await restarted.aclose()
            await sdk.threads.delete(tid)


async def test_durability_exit_checkpoints_less_than_async(client):
    checkpoints = {}
    for durability in ("async", "exit"):
        tid = (await client.threads.create())["thread_id"]
        out = await client.runs.wait(tid, "supervisor", durability=durability,
                                     input=user("What is Redis persistence?"))
        assert "redis-persistence" in last_message(out)["content"]
        checkpoints[durability] = len(await client.threads.get_history(tid, limit=100))
    assert 1 <= checkpoints["exit"] < checkpoints["async"], checkpoints


async def test_a_stream_with_on_disconnect_cancel_cancels_its_run(cluster_url, http,
                                                                 stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 5000})
    tid = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=cluster_url, timeout=60) as streaming, \
            streaming.stream("POST", f"/threads/{tid}/runs/stream", json={
                "assistant_id": "supervisor", "input": user("What is Redis persistence?"),
                "if_not_exists": "create", "on_disconnect": "cancel"}) as response:
        run_id = response.headers["content-location"].rsplit("/", 1)[-1]
        async for line in response.aiter_lines():
            if line.startswith("event: metadata"):
                break  # and go away
    await http.get(f"/threads/{tid}/runs/{run_id}/join")
    assert (await http.get(f"/threads/{tid}/runs/{run_id}")).json()["status"] == "interrupted"


async def test_tasks_and_checkpoints_stream_modes_and_the_wait_location(client, http):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    events = {part.event async for part in client.runs.stream(
        tid, "supervisor", input=user("What did I ask before?"),
        stream_mode=["tasks", "checkpoints"])}
    assert {"tasks", "checkpoints"} <= events
    response = await http.post(f"/threads/{tid}/runs/wait", json={
        "assistant_id": "supervisor", "input": user("What did I ask before?")})
    assert response.headers["location"].endswith("/join")
    assert response.headers["location"].startswith(f"/threads/{tid}/runs/")


@pytest.mark.parametrize("phrase", ["malformed route", "unknown worker"])
async def test_the_supervisor_survives_a_malformed_route_call(client, phrase):
    out = await client.runs.wait(None, "supervisor",
                                 input=user(f"{phrase}: What is Redis persistence?"))
    assert "__error__" not in out
    assert "redis-persistence" in last_message(out)["content"]
