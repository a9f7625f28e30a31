"""An embedded Redis Cluster (3 masters, one replica each) and the Serve app on it, for
``tests/test_redis_cluster.py`` and then ``tests/test_redis_faults.py`` (``tests/conftest.py``
runs them last, in that order): one start for both.

Ray is one per process and the session's own cluster (``cluster_url``) may be up in this
one, so the app runs as ``python -m serve_app`` in a child process (its own local Ray),
pointed at the cluster and at the session's stub model.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from agents.local.process import free_port
from agents.local.redis_cluster import EmbeddedRedisCluster
from agents.settings import PROJECT_ROOT


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedRedisCluster:
    with EmbeddedRedisCluster(tmp_path_factory.mktemp("redis-cluster"), shards=3,
                              replicas=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def served(redis_cluster: EmbeddedRedisCluster, stub_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> str:
    """``make run``'s entry point on the cluster, in a child process; its base URL."""
    data_dir = tmp_path_factory.mktemp("cluster-app")
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_cluster.url,
           "AGENT_CLUSTER_REDIS__CLUSTER": "true", "OPENAI_BASE_URL": stub_url,
           "AGENT_CLUSTER_MODEL__MAX_RETRIES": "0", "AGENT_CLUSTER_MODEL__TIMEOUT_S": "30",
           "AGENT_CLUSTER_DATA_DIR": str(data_dir),
           "AGENT_CLUSTER_WORKSPACE_DIR": str(data_dir / "workspace"),
           # admission judges the queue by a drain rate that a few test runs make tiny
           "AGENT_CLUSTER_API__MAX_QUEUE_WAIT_S": "600",
           # finished runs' event streams expire 5 s after their end (not 60): the short
           # soak's key count is flat within seconds of its start, as a long one's after a
           # minute
           "AGENT_CLUSTER_RETENTION__EVENTS_GRACE_S": "5",
           # ports of their own, and patience with a proxy slow to start on a busy box
           "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
           "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
           "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
           "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
           "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}
    for name in ("RAY_ADDRESS", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        env.pop(name, None)
    url = f"http://127.0.0.1:{port}"
    for attempt in range(3):  # a start on a busy box can time out (Ray's node, Serve's proxy)
        log_path = data_dir / f"serve-{attempt}.log"
        with log_path.open("wb") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "serve_app", "--port", str(port),
                 "--metrics-port", str(free_port())],
                cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        if _came_up(url, child):
            break
        _stop(child)
    else:
        pytest.fail(f"the app did not come up: {log_path.read_text()[-3000:]}")
    try:
        yield url
    finally:
        _stop(child)


def _came_up(url: str, child: subprocess.Popen) -> bool:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                return True
        time.sleep(0.5)
    return False


def _stop(child: subprocess.Popen) -> None:
    """SIGTERM drains, then stops Serve and Ray; SIGKILL to the group if that hangs."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)
