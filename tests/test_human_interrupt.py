"""Approvals in LangGraph's own shape, through the API in one process (ASGI, no Ray): our
approval interrupt is a ``HumanInterrupt`` and takes ``HumanResponse`` answers (as Agent
Inbox and agent-chat-ui send them), and a user's graph that interrupts with a bare
``HumanInterrupt`` is decided by an approver, logged, and resumed with ``HumanResponse`` s;
the console's inbox (a real browser) lists such an interrupt and answers it."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, TypedDict

import httpx
import pytest
import uvicorn
from langchain_core.messages import AIMessage
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from agents.local.process import free_port
from agents.settings import AuthSettings, LimitsSettings, Settings
from serve_app.api.http_api import build_api
from tests.test_console import browser, decided_text, inbox_item, wait_for  # noqa: F401

AUTH_FILE = "./tests/langgraph_auth.py:auth"
ALICE = {"Authorization": "Bearer alice-token"}  # a user
CAROL = {"Authorization": "Bearer carol-token"}  # an approver
USER_GRAPH = "mailer"
EMAIL = {"to": "customer@example.com", "body": "Your refund is on its way."}


class MailState(TypedDict):
    messages: Annotated[list, add_messages]


def review_email(state: MailState) -> dict[str, Any]:
    """A user's node as LangGraph's HITL docs write one: ``interrupt([request])[0]``."""
    request = {"action_request": {"action": "send_email", "args": EMAIL},
               "config": {"allow_accept": True, "allow_edit": True, "allow_respond": False,
                          "allow_ignore": False},
               "description": "Send this email to the customer?"}
    response = interrupt([request])[0]
    if response["type"] == "accept":
        outcome = f"sent to {EMAIL['to']}"
    else:
        outcome = f"sent to {response['args']['args']['to']}"
    return {"messages": [AIMessage(outcome)]}


def mailer(checkpointer: Any):
    builder = StateGraph(MailState)
    builder.add_node(review_email)
    builder.add_edge(START, "review_email")
    return builder.compile(checkpointer=checkpointer)


@pytest.fixture(scope="module")
async def app(settings: Settings, in_process_service):
    """The API over the built-in graphs plus a user's graph, with the LangGraph auth file
    of tests/test_auth.py (carol is the approver)."""
    async with in_process_service(settings, "human-interrupt") as service:
        service.graphs[USER_GRAPH] = mailer(service.executor.checkpointer)
        # no per-user run rate: alice also runs in other files against the same Redis
        yield build_api(service, AuthSettings(path=AUTH_FILE), LimitsSettings(runs_per_minute=0))


@pytest.fixture(scope="module")
async def api(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api", timeout=60) as client:
        yield client


async def waiting(api: httpx.AsyncClient, graph: str, text: str) -> tuple[str, Any]:
    """A thread of alice's whose run on ``graph`` waits on a human: its id and the
    interrupt's value."""
    thread = (await api.post("/threads", json={}, headers=ALICE)).json()
    tid = thread["thread_id"]
    run = await api.post(f"/threads/{tid}/runs/wait", headers=ALICE, json={
        "assistant_id": graph, "input": {"messages": [{"role": "user", "content": text}]}})
    assert run.status_code == 200, run.text
    state = (await api.get(f"/threads/{tid}/state", headers=ALICE)).json()
    [task] = [t for t in state["tasks"] if t["interrupts"]]
    return tid, task["interrupts"][0]["value"]


def resume(graph: str, value: Any) -> dict[str, Any]:
    return {"assistant_id": graph, "command": {"resume": value}}


async def test_our_approval_is_a_human_interrupt_decided_by_human_responses(api):
    tid, value = await waiting(api, "supervisor", "Refund $500 to order 42")
    assert value["type"] == "approval" and value["tool"] == "issue_refund"
    assert value["action_request"] == {"action": "issue_refund", "args": value["args"]}
    assert value["config"] == {"allow_accept": True, "allow_edit": True,
                               "allow_respond": True, "allow_ignore": True}
    assert "issue_refund" in value["description"]

    accept = resume("supervisor", [{"type": "accept", "args": None}])
    refused = await api.post(f"/threads/{tid}/runs/wait", json=accept, headers=ALICE)
    assert refused.status_code == 403  # the approver rule holds for LangGraph's form too
    for bad in ([{"type": "edit", "args": {"action": "delete_records", "args": {}}}],
                {"type": "response", "args": ""}, [{"type": "accept"}, {"type": "accept"}]):
        malformed = await api.post(f"/threads/{tid}/runs/wait", json=resume("supervisor", bad),
                                   headers=CAROL)
        assert malformed.status_code == 422, (bad, malformed.text)

    edited = {**value["args"], "amount": 20}
    done = await api.post(f"/threads/{tid}/runs/wait", headers=CAROL, json=resume(
        "supervisor", [{"type": "edit", "args": {"action": "issue_refund", "args": edited}}]))
    assert done.status_code == 200, done.text
    assert "Refund issued: $20 to order 42" in json.dumps(done.json())
    [entry] = (await api.get(f"/threads/{tid}/approvals", headers=ALICE)).json()
    assert entry["by"] == "carol" and entry["authenticated"] is True
    assert entry["action"] == "edit" and entry["args"]["amount"] == 20
    assert entry["original_args"]["amount"] == 500


@pytest.mark.parametrize(("response", "told"), [
    ({"type": "response", "args": "wrong order, use 43"}, "Rejected by carol: wrong order, use 43"),
    ({"type": "ignore", "args": None}, "Rejected by carol: ignored"),
])
async def test_a_response_or_ignore_rejects_and_the_agent_is_told(api, response, told):
    tid, _ = await waiting(api, "supervisor", "Refund $500 to order 42")
    done = await api.post(f"/threads/{tid}/runs/wait", json=resume("supervisor", response),
                          headers=CAROL)
    assert done.status_code == 200, done.text
    assert told in json.dumps(done.json())
    [entry] = (await api.get(f"/threads/{tid}/approvals", headers=ALICE)).json()
    assert entry["action"] == "reject" and entry["by"] == "carol"


async def test_a_users_bare_human_interrupt_is_listed_decided_and_logged(api):
    tid, value = await waiting(api, USER_GRAPH, "email the customer")
    assert value[0]["action_request"]["action"] == "send_email"
    # the console's inbox finds it as it polls: interrupted threads, with their interrupts
    found = (await api.post("/threads/search", headers=CAROL,
                            json={"status": "interrupted", "limit": 1000})).json()
    [listed] = [t for t in found if t["thread_id"] == tid]
    [[pending]] = listed["interrupts"].values()
    assert pending["value"] == value

    edit = {"type": "edit", "args": {"action": "send_email",
                                     "args": {**EMAIL, "to": "billing@example.com"}}}
    refused = await api.post(f"/threads/{tid}/runs/wait", json=resume(USER_GRAPH, [edit]),
                             headers=ALICE)
    assert refused.status_code == 403
    for bad in ({"type": "ignore", "args": None},  # allow_ignore is false
                {"type": "response", "args": "no"},  # allow_respond is false
                {"action": "approve"}):  # not a HumanResponse
        malformed = await api.post(f"/threads/{tid}/runs/wait", json=resume(USER_GRAPH, bad),
                                   headers=CAROL)
        assert malformed.status_code == 422, (bad, malformed.text)

    # keyed by interrupt id, a single response, as the console sends it: the graph gets
    # the list it asked for
    keyed = {pending["id"]: {**edit, "by": "mallory"}}
    done = await api.post(f"/threads/{tid}/runs/wait", json=resume(USER_GRAPH, keyed),
                          headers=CAROL)
    assert done.status_code == 200, done.text
    assert done.json()["messages"][-1]["content"] == "sent to billing@example.com"
    [entry] = (await api.get(f"/threads/{tid}/approvals", headers=ALICE)).json()
    assert entry["by"] == "carol" and entry["authenticated"] is True
    assert (entry["tool"], entry["response"], entry["action"]) == ("send_email", "edit", "edit")
    assert entry["original_args"] == EMAIL and entry["args"]["to"] == "billing@example.com"
    assert (await api.get(f"/threads/{tid}", headers=ALICE)).json()["status"] == "idle"


async def test_an_accepted_bare_interrupt_resumes_the_users_graph(api):
    tid, _ = await waiting(api, USER_GRAPH, "email the customer")
    done = await api.post(f"/threads/{tid}/runs/wait", headers=CAROL,
                          json=resume(USER_GRAPH, [{"type": "accept", "args": None}]))
    assert done.json()["messages"][-1]["content"] == f"sent to {EMAIL['to']}"
    [entry] = (await api.get(f"/threads/{tid}/approvals", headers=ALICE)).json()
    assert entry["action"] == "approve" and entry["args"] == EMAIL


@pytest.fixture(scope="module")
async def served(app):
    """The same app over HTTP on a loopback port, in this event loop (its service's)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_the_inbox_lists_a_bare_human_interrupt_and_answers_it(api, served, request):
    driver = request.getfixturevalue("browser")  # tests/test_console.py's headless chromium
    tid, _ = await waiting(api, USER_GRAPH, "email the customer")

    def decide_in_the_browser() -> tuple[str, str, list[str]]:
        driver.get(f"{served}/ui/inbox")
        driver.find_element(By.ID, "signin-summary").click()
        driver.find_element(By.ID, "signin-token").send_keys("carol-token", Keys.ENTER)
        item = wait_for(driver, lambda: inbox_item(driver, tid), what="the HumanInterrupt")
        shown = [b.get_attribute("data-action") for b in item.find_elements(
            By.CSS_SELECTOR, "button[data-action]") if b.is_displayed()]
        heading, text = item.find_element(By.TAG_NAME, "h3").text, item.text
        item.find_element(By.CSS_SELECTOR, 'button[data-action="edit"]').click()
        to = wait_for(driver, lambda: item.find_elements(By.NAME, "to"))[0]
        to.clear()
        to.send_keys("billing@example.com")
        item.find_element(By.CSS_SELECTOR, 'button[data-action="send-edit"]').click()
        wait_for(driver, lambda: "sent to billing@example.com" in decided_text(driver, tid),
                 timeout=60, what="the graph's outcome")
        return heading, text, shown

    heading, text, shown = await asyncio.to_thread(decide_in_the_browser)
    assert heading == f"send_email requested by {USER_GRAPH}"
    assert "Send this email to the customer?" in text and "customer@example.com" in text
    assert shown == ["approve", "edit"]  # what its config allows (neither respond nor ignore)
    [entry] = (await api.get(f"/threads/{tid}/approvals", headers=ALICE)).json()
    assert (entry["by"], entry["response"]) == ("carol", "edit")
    assert entry["args"] == {**EMAIL, "to": "billing@example.com"}
