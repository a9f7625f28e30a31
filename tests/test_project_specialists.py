"""Users' specialists under the built-in supervisor: roles that run a project's graphs
(``roles.<name>.graph``) and the ReAct specialist with a project's tool by import path.

In this process (no Ray): ``tests/fixtures/two_graph_project`` with its roles
(``agents.yaml``) under ``AgentSystem``, on the session's Redis and stub model. Then the
same project served by a real start (``--config``, ``AGENT_CLUSTER_CONFIG``), talked to
with ``langgraph_sdk`` only: both graphs routed to in parallel, one asking for approval.
"""

from __future__ import annotations

import json
import os
import signal
import uuid

import pytest
import yaml
from langchain_core.messages import AIMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import Command, interrupt
from langgraph_sdk import get_client

from agents.checkpoint import create_redis
from agents.keys import checkpoints_key
from agents.project import Project
from agents.settings import PROJECT_ROOT, RoleSettings, Settings, graph_roles
from agents.system import AgentSystem, Runtime, config_for
from agents.tools import resolve_tools
from agents.workers import GraphWorker
from tests.test_own_agents import served

PROJECT = PROJECT_ROOT / "tests" / "fixtures" / "two_graph_project"
ROLES = yaml.safe_load((PROJECT / "agents.yaml").read_text())["roles"]
ASK = "Ask billing and refunds in parallel: why was I charged twice? Refund $30 to order 7"
ACCEPTED = "refunds: Refund of $30 to order 7 issued."


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.fixture
async def system(settings: Settings, monkeypatch):
    """The project's roles (and ``orders``, the ReAct specialist with the project's tool)
    over its graphs, compiled with the runtime's checkpointer and store."""
    monkeypatch.setenv("OPENAI_BASE_URL", settings.model.base_url)  # the graphs' ChatOpenAI
    monkeypatch.setenv("OPENAI_API_KEY", settings.model.api_key)
    monkeypatch.syspath_prepend(str(PROJECT))  # "." of its dependencies
    roles = {**ROLES, "orders": {"description": "looks orders up",
                                 "tools": ["two_graphs.tools:lookup_order"]}}
    approval = settings.approval.model_copy(update={"always": ["lookup_order"]})
    runtime = await Runtime.create(settings.model_copy(update={
        "roles": {name: RoleSettings.model_validate(role) for name, role in roles.items()},
        "approval": approval}))
    graphs = await Project.load(PROJECT / "langgraph.json").load_graphs(
        runtime.checkpointer, runtime.store)
    yield AgentSystem(runtime, graphs)
    await runtime.aclose()


async def test_project_graphs_are_routed_to_in_parallel_and_interrupt_the_run(system):
    tid = f"roles-{uuid.uuid4().hex[:8]}"
    lanes: dict[str, list[str]] = {}
    async for event in system.astream(ASK, tid):
        lanes.setdefault(event["role"], []).append(event["type"])
    assert "token" in lanes["billing"] and "progress" in lanes["billing"], lanes
    (pending,) = (await system.supervisor.aget_state(config_for(tid))).interrupts
    [request] = pending.value  # the graph's list of one HumanInterrupt, tagged
    assert request["action_request"] == {"action": "issue_refund",
                                         "args": {"amount": 30.0, "order_id": "7"}}
    assert request["role"] == "refunds" and request["thread_id"].startswith(f"{tid}/refunds/")
    done = await system.supervisor.ainvoke(Command(resume=[{"type": "accept"}]),
                                           config_for(tid))
    answers = {m.name: m.text for m in done["messages"][1:]}
    assert answers["refunds"] == "Refund of $30 to order 7 issued."
    assert answers["billing"].startswith("Hello from the stub model.")
    assert ACCEPTED in done["messages"][-1].text
    fields = await system.runtime.redis.hkeys(checkpoints_key(tid))  # under the parent's tag
    assert {f.decode().split("/")[1] for f in fields if f.startswith(b"/")} == \
        {"billing", "refunds"}


def asks_twice() -> StateGraph:
    """Two questions in a row: a resume that is repeated must not answer the second."""
    def ask(question: str):
        def node(state: MessagesState) -> dict:
            return {"messages": [AIMessage(f"{question}: {interrupt(question)}")]}
        return node
    return (StateGraph(MessagesState).add_node("first", ask("first"))
            .add_node("second", ask("second")).add_edge(START, "first")
            .add_edge("first", "second"))


async def test_a_repeated_resume_of_a_graph_role_is_applied_once(system):
    worker = GraphWorker({"asker": asks_twice().compile(system.runtime.checkpointer)})
    request = {"role": "asker", "thread_id": f"t-{uuid.uuid4().hex[:8]}/asker/1",
               "task": "go"}
    assert (await worker.invoke(request)).interrupt == "first"
    resume = {**request, "task": None, "resume": "yes", "resume_key": "1:0"}
    assert (await worker.invoke(resume)).interrupt == "second"
    again = await worker.invoke({**resume, "resume": "again"})  # e.g. after a crash
    assert (again.status, again.interrupt) == ("interrupted", "second")
    done = await worker.invoke({**resume, "resume": "ok", "resume_key": "1:1"})
    state = await worker.graphs["asker"].aget_state(config_for(request["thread_id"]))
    assert [m.text for m in state.values["messages"][1:]] == ["first: yes", "second: ok"]
    assert (done.status, done.answer) == ("done", "second: ok")


async def test_a_projects_tool_by_import_path_waits_for_approval_by_name(system):
    tid = f"tools-{uuid.uuid4().hex[:8]}"
    await system.ainvoke('Ask orders in parallel: use lookup_order {"order_id": "42"}', tid)
    (pending,) = await system.pending_approvals(tid)
    assert (pending["type"], pending["tool"], pending["args"]) == \
        ("approval", "lookup_order", {"order_id": "42"})
    done = await system.resume(tid, {"action": "approve", "by": "alice"},
                               pending["interrupt_id"])
    report = next(m for m in done["messages"] if m.name == "orders").text
    assert json.loads(report.removeprefix("lookup_order said: ")) == {
        "order_id": "42", "status": "shipped", "total": 42.5}


def test_a_bad_role_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"tool 'two_graphs.nowhere:x' does not import: "
                                         r"ModuleNotFoundError"):
        resolve_tools(["two_graphs.nowhere:x"], {})
    with pytest.raises(ValueError, match=r"no tool 'lookup'"):
        resolve_tools(["lookup"], {})
    with pytest.raises(ValueError, match="graph 'billing' or the ReAct specialist"):
        RoleSettings(description="x", graph="billing", tools=["search_corpus"])
    roles = {name: RoleSettings.model_validate(role) for name, role in ROLES.items()}
    assert graph_roles(roles, ["billing", "refunds"]) == {"billing": "billing",
                                                          "refunds": "refunds"}
    with pytest.raises(ValueError, match=r"roles \{'refunds': 'refunds'\} name graphs the "
                                         r"project does not have \(its graphs: \['billing'\]"):
        graph_roles(roles, ["billing"])


# one cluster serving the project, its roles from its agents.yaml
@pytest.fixture(scope="module")
def cluster(settings, tmp_path_factory):
    """A start of the project (``tests/test_own_agents.py``'s) with ``AGENT_CLUSTER_CONFIG``
    its ``agents.yaml``: a supervisor replica, the built-in specialists, a deployment per
    graph (two replicas of ``billing``)."""
    with served(PROJECT / "langgraph.json", settings, tmp_path_factory.mktemp("roles"),
                {"AGENT_CLUSTER_CONFIG": str(PROJECT / "agents.yaml"),
                 "AGENT_CLUSTER_GRAPH_DEPLOYMENTS__GRAPHS": '{"billing": {"min_replicas": 2}}'}
                ) as served_project:
        yield served_project


@pytest.mark.timeout(600)
async def test_the_supervisor_routes_to_both_graphs_and_one_asks_for_approval(cluster, settings):
    client = get_client(url=cluster.url)
    assert {a["graph_id"] for a in await client.assistants.search(limit=50)} == {
        "supervisor", "researcher", "coder", "reviewer", "billing", "refunds"}  # graphs
    tid = (await client.threads.create())["thread_id"]
    parts = [p async for p in client.runs.stream(tid, "supervisor", input=user(ASK),
                                                 stream_mode=["updates", "custom"])]
    routed = [p.data["supervisor"]["assignments"] for p in parts
              if p.event == "updates" and "supervisor" in p.data]
    assert [[a["worker"] for a in step] for step in routed] == [["billing", "refunds"]]
    lanes = {(p.data["role"], p.data["type"]) for p in parts if p.event == "custom"}
    assert {("billing", "token"), ("billing", "progress")} <= lanes, lanes
    state = await client.threads.get_state(tid)
    [request] = state["interrupts"][0]["value"]
    assert (request["role"], request["action_request"]["args"]) == (
        "refunds", {"amount": 30.0, "order_id": "7"})
    assert (await client.threads.get(tid))["status"] == "interrupted"
    redis = create_redis(cluster.redis_url, settings.redis)
    fields = await redis.hkeys(checkpoints_key(tid))  # the waiting sub-thread: parent's tag
    await redis.aclose()
    assert any(field.startswith(f"{request['thread_id'][len(tid):]}#".encode())
               for field in fields), fields
    with pytest.raises(Exception, match="422"):  # the request's config: one answer each
        await client.runs.wait(tid, "supervisor", command={"resume": [{"type": "accept"}] * 2})
    done = await client.runs.wait(tid, "supervisor", command={"resume": [{"type": "accept"}]})
    assert ACCEPTED in done["messages"][-1]["content"], done["messages"]
    reports = {m["name"]: m for m in done["messages"] if m.get("response_metadata", {}
                                                             ).get("worker")}
    assert set(reports) == {"billing", "refunds"}
    assert reports["refunds"]["response_metadata"]["thread_id"].startswith(f"{tid}/refunds/")


async def test_a_graph_roles_replica_killed_mid_call_answers_from_another(cluster, stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 3000})  # each model call: 3 s to answer
    client = get_client(url=cluster.url)
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "supervisor", input=user(
        "Ask billing in parallel: why was I charged twice?"), stream_mode=["custom"])
    seen = []
    async for part in client.runs.join_stream(tid, run["run_id"]):
        data = part.data if part.event == "custom" else {}
        if data.get("role") == "billing" and "pid" in (data.get("data") or {}):
            seen.append(data["data"]["pid"])
            if len(seen) == 1:
                os.kill(seen[0], signal.SIGKILL)  # in its model call
    final = await client.runs.get(tid, run["run_id"])
    assert final["status"] == "success", final
    assert len(seen) == 2 and seen[1] != seen[0], seen  # the call went on elsewhere
    messages = (await client.threads.get_state(tid))["values"]["messages"]
    assert messages[-1]["content"].startswith("billing: Hello from the stub model."), messages
