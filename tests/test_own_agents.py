"""A user's LangGraph project served as it is (``python -m serve_app --config langgraph.json``).

The loader in this process (no Ray): the projects under ``tests/fixtures/`` load as
LangGraph's server loads them; every bad input stops the start naming the file, the
attribute and the cause. Then one real start of ``tests/fixtures/langgraph.json`` (the
fixtures' graphs), in a process of its own, talked to with ``langgraph_sdk`` only: a ReAct
agent with a context and a tool, an ``interrupt()`` in a tool resumed with ``Command``, a
replica of a user's graph SIGKILLed mid-run, a node that raises, a cancel; and, with
``two_graph_project``'s roles (``AGENT_CLUSTER_CONFIG``), the built-in supervisor routing to
two of its graphs in parallel, one asking for approval, one's replica killed mid-call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph_sdk import get_client

from agents.checkpoint import create_redis
from agents.keys import checkpoints_key
from agents.local.process import free_port
from agents.local.redis_server import EmbeddedRedis
from agents.project import GraphLoadError, Project, ProjectError
from agents.settings import PROJECT_ROOT, Settings
from serve_app.__main__ import parse_args
from serve_app.deployments.graph import graph_pool, route_graphs
from serve_app.ops.launcher import HAPROXY_MODE_PORTS
from serve_app.resources.api_errors import ApiError
from serve_app.resources.schemas import RunCreate
from serve_app.resources.service import AgentService
from serve_app.resources.service_context import ServiceContext
from serve_app.runs.fencing import FencedRedisSaver
from tests.serve_yaml import one_supervisor

FIXTURES = PROJECT_ROOT / "tests" / "fixtures"
ROLES_PROJECT = FIXTURES / "two_graph_project"  # its graphs' roles, in its agents.yaml
BUILT_INS = ["supervisor", "researcher", "coder", "reviewer"]
GRAPHS = ["agent", "refund", "slow", "boom", "billing", "refunds"]
ASK = "Ask billing and refunds in parallel: why was I charged twice? Refund $30 to order 7"
ACCEPTED = "refunds: Refund of $30 to order 7 issued."


# the loader, in this process
async def test_template_projects_load_as_langgraph_serves_them():
    agent = Project.load(FIXTURES / "react_agent" / "langgraph.json")
    assert agent.notes() == ["note: python_version only matters to an image build "
                             "(langgraph build); not used here"]  # $schema: no note
    assert agent.env_vars() == {"ORDERS_REGION": "eu-west"}
    assert agent.pip_requirements() == []  # "." has no pyproject: put on the path
    saver = InMemorySaver()
    graph = await agent.load_graph("agent", checkpointer=saver)  # a compiled graph
    assert graph.checkpointer is saver
    assert "max_search_results" in graph.get_context_jsonschema()["properties"]
    refund = Project.load(FIXTURES / "refund_agent" / "langgraph.json")
    assert refund.description("refund") == "issues refunds once a human accepts them"
    assert (await refund.load_graph("refund", saver)).checkpointer is saver  # a StateGraph
    slow = Project.load(FIXTURES / "slow_agent" / "langgraph.json")
    made = await slow.load_graph("slow", saver)  # an async factory taking a config
    assert set(made.nodes) == {"__start__", "first", "second"}
    slow.graphs["checked"] = "./slow_agent/graph.py:checked_graph"
    assert (await slow.load_graph("checked", saver)).checkpointer is saver  # a context manager


def write_project(folder: Path, graphs: dict, files: dict[str, str] | None = None,
                  **keys) -> Path:
    for name, text in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    path = folder / "langgraph.json"
    path.write_text(json.dumps({"graphs": graphs, **keys}))
    return path


SG = "from langgraph.graph import StateGraph\ngraph = StateGraph(dict)\n"
BAD_GRAPHS = {
    "missing file": ("./nowhere.py:graph", {}, "FileNotFoundError"),
    "syntax error": ("./bad.py:graph", {"bad.py": "def graph(:\n"}, "SyntaxError"),
    "import error": ("./imp.py:graph", {"imp.py": "import no_such_module_xyz\n"},
                     "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    "missing attribute": ("./ok.py:grpah", {"ok.py": "graph = 1\n"}, "no such attribute"),
    "not a graph": ("./ok.py:graph", {"ok.py": "graph = 1\n"}, "int is not a graph"),
    "factory raises": ("./fac.py:make", {"fac.py": "def make():\n    raise KeyError('db')\n"},
                       "the factory raised KeyError: 'db'"),
    "no module": ("no_such_pkg_xyz.graph:graph", {}, "ModuleNotFoundError"),
    "does not compile": ("./sg.py:graph", {"sg.py": SG}, "it does not compile: ValueError: "
                         "Graph must have an entrypoint"),
}


@pytest.mark.parametrize("case", BAD_GRAPHS)
async def test_a_graph_that_does_not_load_is_named_with_its_cause(case, tmp_path):
    target, files, cause = BAD_GRAPHS[case]
    project = Project.load(write_project(tmp_path, {"g": target}, files))
    with pytest.raises(GraphLoadError) as raised:
        await project.load_graph("g")
    where, attr = target.rsplit(":", 1)
    named = str(tmp_path / where.removeprefix("./")) if where.startswith(".") else where
    assert f"graph 'g': {named}:{attr}: " in str(raised.value)
    assert cause in str(raised.value)


def test_keys_refused_noted_or_warned_by_name(tmp_path):
    graphs = {"g": "./g.py:graph"}
    with pytest.raises(ProjectError, match=r"http: .*remove http.app, cors"):
        Project.load(write_project(tmp_path, graphs, http={"app": "./a.py:app", "cors": {}}))
    with pytest.raises(ProjectError, match=r"store\.index\.embed: String should match"):
        Project.load(write_project(tmp_path, graphs, store={"index": {"dims": 8,
                                                                      "embed": "fake"}}))
    with pytest.raises(ProjectError, match=r"graphs: .*at least 1"):
        Project.load(write_project(tmp_path, {}))
    with pytest.raises(ProjectError, match=r"graph ids \['my agent', 'a#b'\]: use letters"):
        Project.load(write_project(tmp_path, {"my agent": "./g.py:g", "a#b": "./g.py:g"}))
    project = Project.load(write_project(
        tmp_path, graphs, pip_config_file="pip.conf", colour="blue",
        auth={"path": "./auth.py:auth", "openapi": {}},
        store={"ttl": {"default_ttl": 5, "sweep_interval_minutes": 1}, "shards": 2},
        checkpointer={"ttl": {"strategy": "delete", "default_ttl": 90,
                              "sweep_interval_minutes": 2}}))
    assert project.notes() == [
        "note: pip_config_file only matters to an image build (langgraph build); not used here",
        "warning: unknown key 'colour' in langgraph.json, not used",
        "note: store.ttl.sweep_interval_minutes: not needed here (Redis expires the "
        "store's items itself)",
        "warning: unknown key 'store.shards' in langgraph.json, not used",
        "note: auth.openapi: not used here (only auth.path)"]
    assert project.env_vars() == {  # mapped onto our settings, for every replica
        "AGENT_CLUSTER_AUTH__PATH": f"{tmp_path / 'auth.py'}:auth",
        "AGENT_CLUSTER_STORE": '{"index":null,"ttl":{"default_ttl":5.0,"refresh_on_read":true}}',
        "AGENT_CLUSTER_RETENTION__THREAD_TTL_MINUTES": "90.0",
        "AGENT_CLUSTER_RETENTION__SWEEP_INTERVAL_S": "120.0"}
    with pytest.raises(ProjectError, match=r"built-in graphs \['coder', 'researcher', "
                                           r"'reviewer', 'supervisor'\]"):
        Project.load(write_project(tmp_path, {"researcher": "./g.py:graph"})
                     ).check_ids(BUILT_INS)


def test_a_dependency_pip_cannot_install_stops_with_pips_reason(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "pyproject.toml").write_text("[project\nname = 'broken'\n")
    project = Project.load(write_project(tmp_path, {"g": "./g.py:graph"},
                                         dependencies=["./lib"]))
    with pytest.raises(ProjectError) as raised:
        project.install()
    assert f"dependencies ['{tmp_path / 'lib'}']" in str(raised.value)
    assert "ERROR: Exception:\n  tomllib.TOMLDecodeError: Expected ']'" in str(raised.value)


@pytest.fixture
async def project_parts(settings: Settings, monkeypatch):
    """An ingress and one replica per graph of the ``slow_agent`` project, in this process
    (no Ray), as ``deployments.supervisor`` and ``deployments.graph`` build them: the
    ingress holds the graphs for reads and routes their runs to their graphs' pools."""
    monkeypatch.setenv("SLOW_STEP_S", "1")
    redis = create_redis(settings.redis_url, settings.redis)
    saver = FencedRedisSaver(redis_client=redis)
    project = Project.load(FIXTURES / "slow_agent" / "langgraph.json")
    name = f"own-{uuid.uuid4().hex[:6]}"
    ingress = AgentService(redis, await project.load_graphs(saver), settings.api, "ingress",
                           saver, pool=name)
    replicas = {graph_id: ServiceContext(redis, {graph_id: graph}, settings.api,
                                         f"{graph_id}-replica", saver,
                                         pool=graph_pool(name, graph_id))
                for graph_id, graph in (await project.load_graphs(saver)).items()}
    for replica in (ingress, *replicas.values()):
        route_graphs(replica.executor, project.graphs, name)
    for replica in replicas.values():
        replica.executor.start()
    ingress.executor.start()
    yield ingress, replicas
    for part in (ingress, *replicas.values()):
        await part.aclose()
    await redis.aclose()


@pytest.fixture
def project_replicas(project_parts):
    return project_parts[0]


async def test_a_graphs_runs_go_to_its_own_replicas_and_pool(project_replicas):
    ingress = project_replicas
    thread, _ = await ingress.records.create_thread(None, {})
    tid = thread["thread_id"]
    slow = await ingress.runs.create(tid, RunCreate(assistant_id="slow", input={"steps": []}))
    after = await ingress.runs.create(tid, RunCreate(assistant_id="boom", input={"steps": []}))
    done = await ingress.streams.wait_for_end(tid, slow["run_id"])
    assert (done["status"], done["replica"]) == ("success", "slow-replica")
    failed = await ingress.streams.wait_for_end(tid, after["run_id"])  # next, in boom's pool
    assert (failed["status"], failed["replica"]) == ("error", "boom-replica")
    assert failed["error"] == {"error": "LookupError", "message": "order 7 is not in the ledger"}
    third = await ingress.runs.create(tid, RunCreate(assistant_id="slow", input={"steps": []}))
    while (await ingress.records.get_run(tid, third["run_id"]))["status"] != "running":
        await asyncio.sleep(0.05)
    await ingress.runs.cancel(tid, third["run_id"], wait=True, action="interrupt")
    assert (await ingress.records.get_run(tid, third["run_id"]))["status"] == "interrupted"
    assert (await ingress.records.get_thread(tid))["status"] != "busy"


async def test_a_graph_is_admitted_on_its_own_pools_load(project_parts):
    """A graph whose replicas take nothing (stopped) fills its own pool: its next run is
    refused (503 + Retry-After) while another graph's, and the ingress's, are admitted."""
    ingress, replicas = project_parts
    await replicas["slow"].aclose()  # the slow graph's only replica: its queue waits
    ingress.retune(max_queued_runs=1)
    first, _ = await ingress.records.create_thread(None, {})
    await ingress.runs.create(first["thread_id"],
                              RunCreate(assistant_id="slow", input={"steps": []}))
    second, _ = await ingress.records.create_thread(None, {})
    with pytest.raises(ApiError) as refused:
        await ingress.runs.create(second["thread_id"],
                                  RunCreate(assistant_id="slow", input={"steps": []}))
    assert refused.value.status == 503 and "Retry-After" in refused.value.headers
    other = await ingress.runs.create(second["thread_id"],
                                      RunCreate(assistant_id="boom", input={"steps": []}))
    assert (await ingress.streams.wait_for_end(second["thread_id"], other["run_id"])
            )["status"] == "error"  # boom's replica ran it: its node raises


def test_a_serve_yaml_given_to_config_is_the_serve_config_with_a_note(capsys):
    args = parse_args(["--config", "configs/production.yaml"])
    assert (args.config, args.serve_config) == (None, Path("configs/production.yaml"))
    assert capsys.readouterr().out == ("note: configs/production.yaml taken as "
                                       "--serve-config (--config now takes a langgraph.json)\n")
    args = parse_args(["--config", "tests/fixtures/langgraph.json"])
    assert (args.config, args.serve_config) == (Path("tests/fixtures/langgraph.json"),
                                                PROJECT_ROOT / "configs" / "local.yaml")


def start(args: list[str], settings: Settings, data_dir: Path, log: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m serve_app`` on the session's Redis and stub model, as a service manager
    runs it (a session of its own)."""
    env = {**os.environ, "REDIS_URL": settings.redis_url,
           "OPENAI_BASE_URL": settings.model.base_url,
           "AGENT_CLUSTER_DATA_DIR": str(data_dir),
           "AGENT_CLUSTER_WORKSPACE_DIR": str(data_dir / "workspace"), **(env or {})}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "serve_app", *args], cwd=PROJECT_ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_a_start_with_a_broken_graph_fails_fast_naming_it(settings, tmp_path):
    path = write_project(tmp_path, {"ok": "./ok.py:graph", "bad": "./bad.py:graph"},
                         {"ok.py": SG + "graph.add_node('n', lambda s: s)\n"
                                        "graph.set_entry_point('n')\n",
                          "bad.py": "raise RuntimeError('no database')\n"})
    began = time.monotonic()
    proc = start(["--config", str(path), "--port", str(free_port())], settings, tmp_path,
                 tmp_path / "start.log")
    assert proc.wait(60) != 0
    took = time.monotonic() - began
    out = (tmp_path / "start.log").read_text()
    assert f"cannot start: graph 'bad': {tmp_path / 'bad.py'}:graph: RuntimeError: " \
           "no database" in out, out[-2000:]
    assert "ray" not in out.lower(), "the check comes before Ray starts"
    print(f"refused after {took:.1f} s")
    assert took < 30
    assert not [p for p in psutil.process_iter(["environ"]) if p.info["environ"] and
                p.info["environ"].get("AGENT_CLUSTER_DATA_DIR") == str(tmp_path)]


class Served(NamedTuple):
    url: str  # the API's base URL
    redis_url: str  # its Redis: one of its own


@contextlib.contextmanager
def served(project: Path, settings: Settings, data_dir: Path,
           env: dict[str, str] | None = None) -> Iterator[Served]:
    """``project`` served by a real start (``--config``) until the block ends, its Serve
    YAML given by ``--serve-config`` (one supervisor replica: 2 cores).

    On a Redis of its own: the replicas of every cluster on one Redis pull runs from one
    pool per graph id (docs/scaling.md), and the session's cluster serves a
    ``supervisor`` too."""
    port = free_port()
    log = data_dir / "start.log"
    with EmbeddedRedis(data_dir / "redis") as redis:
        own = settings.model_copy(update={"redis_url": redis.url})
        proc = start(["--config", str(project), "--serve-config",
                      str(one_supervisor(data_dir)), "--port", str(port),
                      "--metrics-port", str(free_port())], own, data_dir, log,
                     {**(env or {}), **{name: str(free_port()) for name in HAPROXY_MODE_PORTS}})
        try:
            deadline = time.monotonic() + 400
            while "is up at" not in log.read_text(errors="replace"):
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            yield Served(f"http://127.0.0.1:{port}", redis.url)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


# one cluster serving tests/fixtures/langgraph.json
@pytest.fixture(scope="module")
def project(settings, tmp_path_factory) -> Iterator[Served]:
    """The fixture project served, two replicas of ``slow``, ``refund`` and ``billing``;
    the supervisor's roles from ``two_graph_project/agents.yaml``."""
    with served(FIXTURES / "langgraph.json", settings, tmp_path_factory.mktemp("own-agents"),
                {"AGENT_CLUSTER_CONFIG": str(ROLES_PROJECT / "agents.yaml"),
                 "AGENT_CLUSTER_GRAPH_DEPLOYMENTS__GRAPHS": json.dumps(
                     {graph: {"min_replicas": 2} for graph in ("slow", "refund", "billing")})}
                ) as served_project:
        yield served_project


@pytest.fixture
def project_url(project: Served) -> str:
    return project.url


def replica_pids(deployment: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"ServeReplica:agent-cluster:{deployment}$"],
                         capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.mark.timeout(600)
async def test_each_graph_is_an_assistant_with_a_deployment_of_its_own(project_url):
    client = get_client(url=project_url)
    found = {a["graph_id"] for a in await client.assistants.search(limit=50)}
    assert set(GRAPHS) | set(BUILT_INS) <= found
    schemas = await client.assistants.get_schemas("agent")
    assert schemas["context_schema"]["properties"]["max_search_results"]["default"] == 3
    assert {node["id"] for node in (await client.assistants.get_graph("slow"))["nodes"]} >= \
        {"first", "second"}
    assert {g: len(replica_pids(g)) for g in GRAPHS} == \
        {"agent": 1, "refund": 2, "slow": 2, "boom": 1, "billing": 2, "refunds": 1}


async def test_react_agent_reads_its_context_and_env_in_a_tool(project_url):
    client = get_client(url=project_url)
    tid = (await client.threads.create())["thread_id"]
    parts = [part async for part in client.runs.stream(
        tid, "agent", input=user("Where is order 42?"), context={"max_search_results": 7},
        stream_mode=["custom", "values"])]
    assert {"searching": "where order 42"} in [p.data for p in parts if p.event == "custom"]
    messages = [p for p in parts if p.event == "values"][-1].data["messages"]
    tool = json.loads(next(m for m in messages if m["type"] == "tool")["content"])
    assert tool == {"hits": [], "max_results": 7, "region": "eu-west"}
    assert messages[-1]["content"] == "I found nothing in the corpus about where order 42."
    assert (await client.threads.get(tid))["status"] == "idle"


async def refund_accepted(client, order: int) -> tuple[str, str]:
    """A refund asked (interrupted in its tool), then accepted with ``Command(resume=...)``:
    the replicas that ran the two runs."""
    tid = (await client.threads.create())["thread_id"]
    first = await client.runs.wait(tid, "refund", input=user(f"Refund $25 to order {order}"))
    assert first["__interrupt__"][0]["value"] == {
        "action": "issue_refund",
        "args": {"amount": 25, "order_id": str(order), "reason": "customer request"}}
    assert (await client.threads.get(tid))["status"] == "interrupted"
    done = await client.runs.wait(tid, "refund", command={"resume": {"type": "accept"}})
    assert done["messages"][-1]["content"] == \
        f"Refund issued: $25 to order {order} (refund r-{order})."
    assert (await client.threads.get(tid))["status"] == "idle"
    resumed, asked = await client.runs.list(tid)  # newest first
    return asked["replica"], resumed["replica"]


async def test_interrupt_in_a_tool_is_resumed_on_the_other_replica(project_url):
    """Either of the graph's two replicas takes a run: until one resume ran on the other
    replica than its question (the first, nearly always: Redis hands a queued run to the
    replica that has waited longest)."""
    client = get_client(url=project_url)
    seen = []
    for order in range(40, 50):
        seen.append(await refund_accepted(client, order))
        if seen[-1][0] != seen[-1][1]:
            break
    assert seen[-1][0] != seen[-1][1], seen


async def first_pid(client, tid: str, rid: str) -> tuple[int, str]:
    async for part in client.runs.join_stream(tid, rid):
        if part.event == "custom" and part.data.get("step") == "first":
            return part.data["pid"], part.id
    raise AssertionError("the run never started its first step")


async def test_a_user_graphs_replica_killed_mid_run_finishes_elsewhere(project_url):
    client = get_client(url=project_url)
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "slow", input={"steps": []},
                                   stream_mode=["custom", "values"])
    pid, seen = await first_pid(client, tid, run["run_id"])
    assert pid in replica_pids("slow")
    os.kill(pid, signal.SIGKILL)
    rest = [p async for p in client.runs.join_stream(tid, run["run_id"], last_event_id=seen)]
    pids = [p.data["pid"] for p in rest if p.event == "custom"]
    assert pids and pid not in pids, rest
    final = await client.runs.get(tid, run["run_id"])
    assert final["status"] == "success" and final["attempt"] == 2, final
    state = await client.threads.get_state(tid)
    assert state["values"]["steps"] == ["first", "second"]


async def test_a_node_that_raises_ends_its_run_in_error_not_its_thread_busy(project_url):
    client = get_client(url=project_url)
    tid = (await client.threads.create())["thread_id"]
    for _ in range(2):  # the thread takes the next run: not left busy
        parts = [p async for p in client.runs.stream(tid, "boom", input={"steps": []})]
        assert parts[-1].event == "error", parts
        assert parts[-1].data == {"error": "LookupError",
                                  "message": "order 7 is not in the ledger"}
    runs = await client.runs.list(tid)
    assert [r["status"] for r in runs] == ["error", "error"]
    assert (await client.threads.get(tid))["status"] == "error"


async def test_a_cancel_reaches_the_graphs_replica(project_url):
    client = get_client(url=project_url)
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "slow", input={"steps": []}, stream_mode=["custom"])
    await first_pid(client, tid, run["run_id"])
    began = time.monotonic()
    await client.runs.cancel(tid, run["run_id"], wait=True)
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    assert time.monotonic() - began < 3  # not the step's end (4 s)
    later = await client.runs.wait(tid, "slow", input={"steps": []})
    assert later["steps"] == ["first", "second"]


# the supervisor over two of the project's graphs (two_graph_project's roles)
@pytest.mark.timeout(600)
async def test_the_supervisor_routes_to_two_graphs_and_one_asks_for_approval(project, settings):
    client = get_client(url=project.url)
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
    redis = create_redis(project.redis_url, settings.redis)
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


async def test_a_graph_roles_replica_killed_mid_call_answers_from_another(project_url, stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 3000})  # each model call: 3 s to answer
    client = get_client(url=project_url)
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
