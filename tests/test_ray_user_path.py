"""The Ray user's path (``configs/local.yaml``'s comment): ``python -m serve_app.ops.services``
starts Redis and the stub model alone, prints what to export before ``serve run``, and leaves
nothing behind on SIGTERM. ``serve run`` itself is not started here: it would be a second Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import redis

from agents.settings import PROJECT_ROOT

START_TIMEOUT_S = 120  # generous: a loaded 2-core box starts Redis and the stub in ~5 s


def read_exports(proc: subprocess.Popen) -> dict[str, str]:
    """The ``export NAME=value`` lines, up to the first comment line that follows them."""
    exports: dict[str, str] = {}
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"exited before printing its exports (code {proc.poll()})"
        if line.startswith("export "):
            name, value = line.removeprefix("export ").strip().split("=", 1)
            exports[name] = value
        elif exports:
            return exports
    raise AssertionError("no exports printed in time")


def test_services_print_their_exports_and_stop_on_sigterm(tmp_path: Path):
    env = {key: value for key, value in os.environ.items()
           if key not in ("REDIS_URL", "OPENAI_BASE_URL")}
    env["AGENT_CLUSTER_DATA_DIR"] = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "serve_app.ops.services"], cwd=PROJECT_ROOT,
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        exports = read_exports(proc)
        assert set(exports) == {"REDIS_URL", "OPENAI_BASE_URL"}

        client = redis.Redis.from_url(exports["REDIS_URL"])
        assert client.ping()
        modules = {module[b"name"].decode().lower() for module in client.module_list()}
        assert {"rejson", "search"} <= modules, modules
        client.close()

        models = httpx.get(f"{exports['OPENAI_BASE_URL']}/models", timeout=10)
        assert models.status_code == 200
        assert models.json()["data"], models.text

        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) >= 2  # Redis and the stub model
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
    _, alive = psutil.wait_procs(started, timeout=10)
    assert alive == [], f"left running: {alive}"
    for url in exports.values():
        port = httpx.URL(url).port
        listening = [c for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert listening == [], f"{url} still listened on"
