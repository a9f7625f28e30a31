"""Start and stop each benchmark target on loopback: our cluster, the floor, ``langgraph dev``.

Every target gets a fresh embedded Redis of its own (so its memory and key counts are its
own, and no target inherits another's indexes) and shares the one stub model, whose
settings the run fixes. Each server is a child process in its own process group, logging
to the run's directory.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from agents.local.process import ManagedProcess, free_port
from agents.local.redis_server import EmbeddedRedis
from agents.settings import PROJECT_ROOT, Settings
from bench.peer_env import ensure_peer_venv

LOCAL_CONFIG = PROJECT_ROOT / "configs" / "local.yaml"
PEER_DIR = Path(__file__).resolve().parent / "langgraph_peer"


def serve_config(path: Path, deployment: str, replicas: int | None) -> dict[str, Any]:
    """configs/local.yaml with ``deployment`` pinned to ``replicas`` (None: unchanged)."""
    config = yaml.safe_load(path.read_text())
    if replicas is not None:
        for app in config["applications"]:
            for dep in app["deployments"]:
                if dep["name"] == deployment:
                    dep.pop("autoscaling_config", None)
                    dep["num_replicas"] = replicas
    return config


def _answers(url: str) -> bool:
    return httpx.get(f"{url}/ok", timeout=2).status_code == 200


@dataclass
class Target:
    """A server under test: ``start()`` returns its base URL; ``stop()`` ends its processes."""

    name: str
    settings: Settings          # the stub's URL; Redis comes from the target's own server
    work_dir: Path
    redis: EmbeddedRedis | None = None
    process: ManagedProcess | None = None
    url: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return self.redis.url if self.redis else ""

    def env(self) -> dict[str, str]:
        """What the server needs on top of our environment."""
        return {"REDIS_URL": self.redis_url,
                "OPENAI_BASE_URL": self.settings.model.base_url or "",
                "OPENAI_API_KEY": self.settings.model.api_key,
                "AGENT_CLUSTER_DATA_DIR": str(self.work_dir),
                "AGENT_CLUSTER_WORKSPACE_DIR": str(self.work_dir / "workspace"),
                "PYTHONPATH": str(PROJECT_ROOT), "LANGGRAPH_CLI_NO_ANALYTICS": "1"}

    def start(self) -> str:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.redis = self._start_redis()
        started = time.monotonic()
        self.url = self._start_server()
        self.info["startup_s"] = round(time.monotonic() - started, 1)
        return self.url

    def _start_redis(self) -> Any:
        """A fresh Redis of its own (a subclass may start another kind)."""
        return EmbeddedRedis(self.work_dir / "redis").start()

    def _start_server(self) -> str:
        raise NotImplementedError

    def _spawn(self, name: str, argv: list[str], ready: Callable[[], bool],
               timeout_s: float, cwd: Path = PROJECT_ROOT) -> None:
        log = self.work_dir / f"{name}.log"
        # env(1) execs the server in place: same pid, same process group, extra variables.
        env = ["/usr/bin/env", *(f"{k}={v}" for k, v in self.env().items())]
        self.process = ManagedProcess(name, [*env, *argv], log_path=log, cwd=cwd)
        self.process.start(ready, timeout_s=timeout_s)

    def log_text(self) -> str:
        path = self.work_dir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and anything it left behind, then Redis."""
        if self.process is not None and self.process.pid:
            leftovers = _descendants(self.process.pid)
            self.process.stop(timeout_s=30)
            for proc in leftovers:
                with contextlib.suppress(psutil.Error):
                    if proc.is_running():
                        proc.send_signal(signal.SIGKILL)
        if self.redis is not None:
            self.redis.stop()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@dataclass
class ClusterTarget(Target):
    """Our Ray Serve app (configs/local.yaml), ``deployment`` pinned to ``replicas``;
    ``traced``: every replica exports every span (OTLP/HTTP, 100 % sampling) to a receiver
    of its own, to weigh tracing's cost against the same target untraced; ``project``: a
    ``langgraph.json`` served too, as ``python -m serve_app --config`` serves it."""

    replicas: int | None = None
    project: Path | None = None
    deployment: str = "supervisor"
    hop: bool = False
    traced: bool = False
    receiver: ManagedProcess | None = None  # the OTLP receiver, in a process of its own
    receiver_port: int = 0

    def env(self) -> dict[str, str]:
        if not self.traced:
            return super().env()
        return {**super().env(), "OTEL_TRACES_SAMPLER": "always_on",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
                    f"http://127.0.0.1:{self.receiver_port}/v1/traces"}

    def stop(self) -> None:
        super().stop()
        if self.receiver is not None:
            self.receiver.stop(timeout_s=10)
            counted = re.findall(r"SPANS (\d+)", self.receiver.log_path.read_text())
            self.info["spans_received"] = int(counted[-1]) if counted else None

    def _start_server(self) -> str:
        if self.traced:
            self.receiver_port = free_port()
            self.receiver = ManagedProcess(
                "otlp receiver", [sys.executable, "-m", "agents.local.otlp_receiver",
                                  "--port", str(self.receiver_port), "--discard"],
                log_path=self.work_dir / "otlp-receiver.log", cwd=PROJECT_ROOT)
            self.receiver.start(lambda: "receiver at" in self.receiver.log_path.read_text()
                                if self.receiver.log_path.exists() else False)
        config = self.work_dir / "serve.yaml"
        config.write_text(yaml.safe_dump(serve_config(LOCAL_CONFIG, self.deployment,
                                                      self.replicas)))
        port = free_port()
        argv = [sys.executable, "-m", "bench.cluster_server", "--config", str(config),
                "--port", str(port)] + (["--hop"] if self.hop else [])
        if self.project is not None:
            argv += ["--project", str(self.project)]
        marker = "HOP " if self.hop else "READY "
        self._spawn(self.name, argv, lambda: marker in self.log_text(), timeout_s=300)
        if self.hop:
            line = next(x for x in self.log_text().splitlines() if x.startswith("HOP "))
            self.info["ray_hop"] = json.loads(line[4:])
        return f"http://127.0.0.1:{port}"


@dataclass
class FloorTarget(Target):
    """Our graphs and API in one uvicorn process, no Ray (bench/floor_server.py)."""

    def _start_server(self) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "bench.floor_server", "--port", str(port)]
        self._spawn(self.name, argv, lambda: _answers(url), timeout_s=60)
        return url


API_LINE = re.compile(r"API:\s*(?:\x1b\[[0-9;]*m)?(http://127\.0\.0\.1:\d+)")


@dataclass
class LangGraphDevTarget(Target):
    """``langgraph dev`` (in-memory runtime) serving ``config``'s project: our graphs
    (bench/langgraph_peer) or a user's. It runs in a copy of the project's folder, as a user
    runs it in theirs (it resolves the file's paths against its working directory), so that
    each start is fresh (no ``.langgraph_api`` from earlier runs) and the project untouched."""

    jobs_per_worker: int = 10
    config: Path = PEER_DIR / "langgraph.json"

    def _start_server(self) -> str:
        binary = ensure_peer_venv(self.work_dir / "peer-venv.log")
        run_dir = self.work_dir / "langgraph-app"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(self.config.parent, run_dir,
                        ignore=shutil.ignore_patterns(".langgraph_api", "__pycache__"))
        port = free_port()
        argv = [str(binary), "dev", "--config", self.config.name, "--no-browser", "--no-reload",
                "--allow-blocking",
                "--host", "127.0.0.1", "--port", str(port), "--server-log-level", "warning",
                "--n-jobs-per-worker", str(self.jobs_per_worker)]
        self.info.update(jobs_per_worker=self.jobs_per_worker, argv=" ".join(argv[1:]))

        def ready() -> bool:  # it prints the port it really uses if the asked one is taken
            found = API_LINE.search(self.log_text())
            return bool(found) and _answers(found.group(1))

        self._spawn(self.name, argv, ready, timeout_s=120, cwd=run_dir)
        return API_LINE.search(self.log_text()).group(1)
