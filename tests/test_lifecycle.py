"""``python -m serve_app`` (``make run``) stopped the way service managers stop it.

SIGTERM: everything it started is gone when it exits, a few seconds later, and the run in
flight went back to the queue (the next start finishes it). SIGKILL of the launcher and its
Ray node's ``ray start``: the next start from the same data dir, on the same ports, clears
what outlived them (HAProxy, Ray's agents) and serves. A port held by a process that is not
ours: the start says which one and exits. Each start is a real process on the session's stub
model and a Redis of the test's own (the session's cluster would take its runs: one pool per
graph id and Redis).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from langgraph_sdk import get_client

from agents.local.process import free_port
from agents.local.redis_server import EmbeddedRedis
from agents.settings import PROJECT_ROOT, Settings
from serve_app.ops.launcher import HAPROXY_MODE_PORTS
from tests.serve_yaml import one_supervisor

STOPPED_WITHIN_S = 30  # Serve's own shutdown timeout, the old behaviour's floor
RESEARCH = "Research how Redis persistence works"


class Start:
    """One ``python -m serve_app`` on fixed ports and a data dir (shared by the starts of a
    test), in a session of its own as a service manager would run it (one supervisor
    replica)."""

    def __init__(self, settings: Settings, data_dir: Path, ports: dict[str, int],
                 redis_url: str):
        self.url = f"http://127.0.0.1:{ports['http']}"
        self.log = data_dir / f"start-{time.monotonic_ns()}.log"
        env = {**os.environ, "REDIS_URL": redis_url,
               "OPENAI_BASE_URL": settings.model.base_url,
               "AGENT_CLUSTER_DATA_DIR": str(data_dir),
               "AGENT_CLUSTER_WORKSPACE_DIR": str(data_dir / "workspace"),
               "HOME": str(data_dir / "home"),  # a fresh machine's: no Ray token yet
               **{name: str(ports[name]) for name in HAPROXY_MODE_PORTS}}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "serve_app", "--port", str(ports["http"]),
                 "--metrics-port", str(ports["metrics"]),
                 "--serve-config", str(one_supervisor(data_dir))],
                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_up(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while "is up at" not in self.text():
            assert self.proc.poll() is None, f"start exited:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"not up:\n{self.text()[-3000:]}"
            time.sleep(0.5)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


def alive(procs: list[psutil.Process]) -> list[str]:
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(proc.cmdline())[:100])
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.fixture
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("http", "metrics", *HAPROXY_MODE_PORTS)}


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    with EmbeddedRedis(tmp_path / "redis") as redis:
        yield redis.url


@pytest.mark.timeout(900)  # three starts: ~1 min each on a quiet 2-core box
async def test_sigterm_hands_runs_back_and_sigkill_leftovers_are_cleared(
        settings, stub_admin, ports, redis_url, tmp_path):
    stub_admin.post("/config", json={"ttft_ms": 1500})  # a run stays in flight for seconds
    first = Start(settings, tmp_path, ports, redis_url)
    try:
        first.wait_up()
        assert (tmp_path / "home" / ".ray" / "auth_token").is_file()  # made for its Ray
        client = get_client(url=first.url)
        tid = (await client.threads.create())["thread_id"]
        run = await client.runs.create(tid, "supervisor",
                                       input={"messages": [{"role": "user", "content": RESEARCH}]})
        while (await client.runs.get(tid, run["run_id"]))["status"] != "running":
            await asyncio.sleep(0.1)
        started = first.descendants()
        assert any("haproxy" in " ".join(p.cmdline()) for p in started)
        signalled = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(STOPPED_WITHIN_S)
        print(f"SIGTERM -> exited after {time.monotonic() - signalled:.1f} s")
        assert alive(started) == [], "processes outlived the stopped start"
        assert "stopped (SIGTERM)" in first.text()
    finally:
        first.proc.kill()
    stub_admin.post("/config", json={"ttft_ms": 0})

    second = Start(settings, tmp_path, ports, redis_url)  # same data dir and ports
    try:
        second.wait_up()
        client = get_client(url=second.url)
        final = await client.runs.join(tid, run["run_id"])
        runs = await client.runs.list(tid)
        assert [r["status"] for r in runs] == ["success"], runs  # finished once, not lost
        assert runs[0]["attempt"] == 1, "handed back: the same attempt continued"
        assert [m["type"] for m in final["messages"]].count("human") == 1
        # A crash that takes the Ray node's `ray start` too (OOM killer, kill -9 of both):
        # nothing of ours cleans up; what outlives it (HAProxy, Ray's agents, varying from
        # run to run) may hold the ports.
        node = second.descendants()
        for proc in (second.proc, *[p for p in node if "--block" in p.cmdline()]):
            proc.kill()
        second.proc.wait(10)
        time.sleep(2)
        survivors = alive(node)
        print(f"outlived the crash: {survivors}")
    finally:
        second.proc.kill()

    third = Start(settings, tmp_path, ports, redis_url)
    try:
        third.wait_up()
        assert alive(node) == [], "the crashed start's processes are gone"
        assert bool(survivors) == ("an earlier, killed start left behind" in third.text())
        assert (await get_client(url=third.url).threads.get(tid))["status"] == "idle"
        started = third.descendants()
        third.proc.send_signal(signal.SIGINT)
        third.proc.wait(STOPPED_WITHIN_S)
        assert alive(started) == []
    finally:
        third.proc.kill()


def test_a_port_held_by_another_process_is_named(settings, ports, redis_url, tmp_path):
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", ports["RAY_SERVE_HAPROXY_STATS_PORT"]))
        foreign.listen()
        start = Start(settings, tmp_path, ports, redis_url)
        assert start.proc.wait(120) != 0
    out = start.text()
    stats_port = ports["RAY_SERVE_HAPROXY_STATS_PORT"]
    assert f"RAY_SERVE_HAPROXY_STATS_PORT port {stats_port} is in use by pid " \
        f"{os.getpid()}" in out, out[-2000:]
    assert f"kill {os.getpid()}" in out
