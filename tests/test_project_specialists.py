"""Users' specialists under the built-in supervisor: roles that run a project's graphs
(``roles.<name>.graph``) and the ReAct specialist with a project's tool by import path.

In this process (no Ray): ``tests/fixtures/two_graph_project`` with its roles
(``agents.yaml``) under ``AgentSystem``, on the session's Redis and stub model. Its graphs
served by a real start under the same roles: ``tests/test_own_agents.py`` (one start for
every fixture project).
"""

from __future__ import annotations

import json
import uuid

import pytest
import yaml
from langchain_core.messages import AIMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import Command, interrupt

from agents.keys import checkpoints_key
from agents.project import Project
from agents.settings import PROJECT_ROOT, RoleSettings, Settings, graph_roles
from agents.system import AgentSystem, Runtime, config_for
from agents.tools import resolve_tools
from agents.workers import GraphWorker
from tests.test_own_agents import ACCEPTED, ASK

PROJECT = PROJECT_ROOT / "tests" / "fixtures" / "two_graph_project"
ROLES = yaml.safe_load((PROJECT / "agents.yaml").read_text())["roles"]


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
