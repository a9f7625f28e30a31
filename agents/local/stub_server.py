"""Runs the stub model server (``python -m agents.local.stub_model``) as a child process."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from agents.local.process import ManagedProcess, free_port
from agents.settings import PROJECT_ROOT, StubModelSettings


class StubModelServer:
    """The OpenAI-compatible stub on a loopback port; ``url`` is its ``/v1`` base URL."""

    def __init__(
        self,
        log_dir: Path,
        config: StubModelSettings | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
    ):
        self.host = host
        self.port = port or free_port(host)
        config = config or StubModelSettings()
        argv = [
            sys.executable, "-m", "agents.local.stub_model",
            "--host", host, "--port", str(self.port),
            "--ttft-ms", str(config.ttft_ms),
            "--tokens-per-s", str(config.tokens_per_s),
            "--fault-rate", str(config.fault_rate),
            "--fault-status", str(config.fault_status),
        ]
        self._process = ManagedProcess(
            "stub-model", argv, log_path=Path(log_dir) / "stub-model.log", cwd=PROJECT_ROOT
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.port}/admin"

    def _answers(self) -> bool:
        return httpx.get(f"http://{self.host}:{self.port}/healthz", timeout=1).status_code == 200

    def start(self) -> StubModelServer:
        self._process.start(self._answers, timeout_s=30.0)
        return self

    def stop(self) -> None:
        self._process.stop()

    def __enter__(self) -> StubModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
