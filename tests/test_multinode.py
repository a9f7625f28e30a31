"""Several Ray nodes on one machine (docs/scaling.md): a head node and worker
nodes started with ``ray start`` (``serve_app.ops.ray_node``: each its own raylet, temp dir and
ports), specialists placed on the workers by a custom resource, supervisors anywhere.

Shows: tokens a specialist on a worker node streams reach the client through the head;
a worker node killed mid-run (raylet, replicas, all at once) -> the run finishes on the
other worker's replicas, once, and Serve re-places the lost replicas; the node rejoining ->
a scale-up puts new replicas on it again (Serve does not move running ones).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from langgraph_sdk import get_client
from langgraph_sdk.errors import APIStatusError
from test_serving import sse_events

from agents.local.process import free_port
from agents.settings import PROJECT_ROOT, ROLES, Settings
from serve_app.ops.launcher import HAPROXY_MODE_PORTS, deploy, load_serve_config, serve_cluster
from serve_app.ops.leftovers import MARKER
from serve_app.ops.ray_node import RayNode, temp_dir_for

SPECIALIST_RESOURCE = "specialist_node"
REPLICA = re.compile(r"ServeReplica:agent-cluster:([a-z]+)")


def placed_config(path: Path, specialists: int) -> Path:
    """configs/local.yaml with fixed replica counts, specialists on ``SPECIALIST_RESOURCE``."""
    config = yaml.safe_load((PROJECT_ROOT / "configs" / "local.yaml").read_text())
    for deployment in config["applications"][0]["deployments"]:
        deployment.pop("autoscaling_config")
        is_specialist = deployment["name"] in ROLES
        deployment["num_replicas"] = specialists if is_specialist else 2
        if is_specialist:
            deployment["ray_actor_options"]["resources"] = {SPECIALIST_RESOURCE: 0.01}
    path.write_text(yaml.safe_dump(config))
    return path


def replicas_on(node: RayNode) -> Counter[str]:
    """Deployment name -> replicas running on ``node`` (its processes carry its marker)."""
    found: Counter[str] = Counter()
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == str(node.state_file):
                found.update(REPLICA.findall(" ".join(proc.cmdline()))[:1])
        except psutil.Error:
            pass
    return found


def wait_placed(nodes: dict[str, RayNode], want, timeout_s: float = 240) -> dict[str, Counter]:
    deadline = time.monotonic() + timeout_s
    while True:
        placed = {name: replicas_on(node) for name, node in nodes.items()}
        if want(placed):
            return placed
        assert time.monotonic() < deadline, placed
        time.sleep(1)


@pytest.fixture
def nodes(tmp_path: Path, monkeypatch):
    """A head node (no specialist resource) and two worker nodes offering it."""
    for name in HAPROXY_MODE_PORTS:  # beside other clusters on this machine
        monkeypatch.setenv(name, str(free_port()))
    nodes = {"head": RayNode(tmp_path / "head.json", temp_dir_for(tmp_path, "head"),
                             num_cpus=1)}
    try:
        nodes["head"].start()
        for name in ("w1", "w2"):
            nodes[name] = worker(tmp_path, name, nodes["head"].address)
            nodes[name].start()
        yield nodes  # a test may replace a worker: whatever is here at the end is stopped
    finally:
        for node in reversed(nodes.values()):
            node.stop()


def worker(tmp_path: Path, name: str, address: str) -> RayNode:
    return RayNode(tmp_path / f"{name}.json", temp_dir_for(tmp_path, name), address=address,
                   num_cpus=1, resources={SPECIALIST_RESOURCE: 1})


async def join_through_failures(client, tid: str, run_id: str, timeout_s: float = 300):
    """Join the run as a client would: a supervisor lost with its node drops the connection,
    and until Serve has re-placed it none may answer; join again."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await client.runs.join(tid, run_id)
        except (httpx.HTTPError, APIStatusError):
            assert time.monotonic() < deadline, "the run never finished"
            await asyncio.sleep(1)


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.mark.timeout(1200)
async def test_two_worker_nodes_stream_fail_over_and_rejoin(settings: Settings, nodes,
                                                            stub_admin, tmp_path):
    config = placed_config(tmp_path / "serve.yaml", specialists=2)
    port = free_port()
    with serve_cluster(settings, config, port=port, address=nodes["head"].address) as url:
        # both specialist replicas of each role on the workers, some on w1 (Serve's SPREAD
        # is best effort: both of one role may land on the same worker)
        placed = wait_placed(nodes, lambda p: any(p["w1"][role] for role in ROLES) and all(
            p["w1"][role] + p["w2"][role] == 2 for role in ROLES))
        assert not any(placed["head"][role] for role in ROLES), placed  # workers only
        supervisors = {name for name, found in placed.items() if found["supervisor"]}
        print(f"placed: {placed}")

        # tokens cross nodes: the researcher (on a worker) -> supervisor -> HAProxy (head)
        stub_admin.post("/config", json={"tokens_per_s": 200})
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            response = await http.post("/api/chat", json={
                "thread_id": f"nodes-{uuid.uuid4()}", "message": "Tell me about redis streams"})
        events = sse_events(response.text)
        tokens = [d for n, d in events if n == "token" and d["role"] == "researcher"]
        assert len(tokens) >= 3 and events[-1][0] == "end", events[-3:]

        # a worker node lost mid-run: the run finishes, every specialist answered once
        stub_admin.post("/config", json={"ttft_ms": 800, "tokens_per_s": 0})
        client = get_client(url=url)
        tid = (await client.threads.create())["thread_id"]
        run = await client.runs.create(tid, "supervisor", input=user(
            "Research how Redis persistence works and write a Python function that parses "
            "a redis.conf line"), stream_mode=["values", "custom"])
        async for part in client.runs.join_stream(tid, run["run_id"], stream_mode="custom"):
            if part.event == "custom" and part.data.get("type") == "progress":
                break  # a specialist call is in flight
        nodes["w1"].kill()
        await join_through_failures(client, tid, run["run_id"])
        stub_admin.post("/config", json={"ttft_ms": 0})
        final = await client.runs.get(tid, run["run_id"])
        assert final["status"] == "success", final
        messages = (await client.threads.get_state(tid))["values"]["messages"]
        answered = Counter(m.get("name") for m in messages if m["type"] == "ai")
        assert {role: answered[role] for role in ROLES} == dict.fromkeys(ROLES, 1), answered
        assert [m["type"] for m in messages].count("human") == 1
        alive = {"head": nodes["head"], "w2": nodes["w2"]}
        wait_placed(alive, lambda p: all(p["w2"][role] == 2 for role in ROLES))  # re-placed

        # the node rejoins: new replicas spread onto it
        nodes["w1"] = worker(tmp_path, "w1-rejoined", nodes["head"].address).start()
        deploy(load_serve_config(placed_config(tmp_path / "serve.yaml", specialists=3), port))
        placed = wait_placed(nodes, lambda p: any(p["w1"][role] for role in ROLES) and all(
            p["w1"][role] + p["w2"][role] == 3 for role in ROLES))  # Serve's SPREAD: not
        # every deployment's new replica lands on the emptier node, some do
        print(f"after rejoin: {placed}; supervisors first on {sorted(supervisors)}")
