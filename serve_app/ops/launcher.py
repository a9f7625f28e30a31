"""Start a local Ray node (or join a running cluster), deploy a Serve config file, and tear
both down: used by the run command and by the end-to-end tests (one Ray per test session).
Stopping drains Serve first (runs in flight go back to the queue), then the node."""

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
from ray._raylet import Config as RayConfig
from ray.serve._private import api as serve_private_api
from ray.serve.schema import ServeDeploySchema

from agents.project import Project
from agents.settings import PROJECT_ROOT, Settings, specialist_roles
from serve_app.ops.ray_node import RayNode, ray_env, temp_dir_for
from serve_app.resources.auth import check_bind
from serve_app.telemetry.tracing import otel_env


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
                      user_configs: dict[str, dict] | None = None,
                      project: Project | None = None,
                      settings: Settings | None = None) -> ServeDeploySchema:
    """A Serve config file, on ``port``, with ``user_configs`` per deployment name (the
    supervisor's are live admission limits, ``api.*``), and a deployment per graph of
    ``project`` (its replicas from ``settings.graph_deployments``)."""
    config = yaml.safe_load(Path(path).read_text())
    if port is not None:
        config.setdefault("http_options", {})["port"] = port
    if project is not None:
        add_project(config["applications"][0], project, settings or Settings())
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            if deployment["name"] in (user_configs or {}):
                deployment["user_config"] = user_configs[deployment["name"]]
    return ServeDeploySchema.model_validate(config)


def add_project(app: dict[str, Any], project: Project, settings: Settings) -> None:
    """The application serves ``project`` (``serve_app.app.build_app``'s ``project``),
    each graph in a deployment named by its id, scaled on its own pool of runs; the Serve
    YAML's specialists that are not (the roles that run a graph) are dropped."""
    app["args"] = {**(app.get("args") or {}), "project": str(project.path)}
    served = {"supervisor", *specialist_roles(settings.roles)}  # a role may run a graph
    app["deployments"] = [d for d in app.get("deployments", []) if d["name"] in served]
    for graph_id in project.graphs:
        scale = settings.graph_deployments.of(graph_id)
        app.setdefault("deployments", []).append({
            "name": graph_id,
            "graceful_shutdown_timeout_s": scale.graceful_shutdown_timeout_s,
            "autoscaling_config": {
                "min_replicas": scale.min_replicas, "max_replicas": scale.max_replicas,
                "upscale_delay_s": scale.upscale_delay_s,
                "downscale_delay_s": scale.downscale_delay_s,
                "metrics_interval_s": 2, "look_back_period_s": 10,
                "policy": {"policy_function":
                           "serve_app.deployments.autoscaling:runs_policy"}}})


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
    address: str | None = None,
    project: Project | None = None,
) -> Iterator[str]:
    """Yield the base URL of the deployed app; shut Serve (and the Ray node started here)
    down afterwards. ``address``: a running Ray cluster's GCS (``host:port``) to deploy
    on instead of starting a head node here. ``metrics_port``: where the started node
    exports Prometheus metrics (Serve's and ours). ``project``: a ``langgraph.json``
    served too, its ``env`` in every replica's environment."""
    config = load_serve_config(config_path, port, project=project, settings=settings)
    extra_env = {**(project.env_vars() if project else {}), **(extra_env or {})}
    check_bind(config.http_options.host, settings.auth)  # no open API on a public address
    os.environ.update(ray_env())  # this driver talks to the nodes as they expect,
    RayConfig.initialize("")       # auth mode included (Ray read it once, at import)
    with contextlib.ExitStack() as stack:
        if address is None:  # a node of our own: its replicas must not inherit another's
            os.environ.pop("RAY_ADDRESS", None)  # address (a shell's, a test session's)
            head = RayNode(settings.data_dir / "ray-head.json",
                           temp_dir_for(settings.data_dir, "head"),
                           num_cpus=num_cpus, metrics_port=metrics_port)
            stack.callback(head.stop)
            head.start(ports=serve_ports(port, metrics_port))
            address = head.address
        ray.init(address=address, namespace="serve", log_to_driver=False,
                 runtime_env={"env_vars": {**service_env(settings), **extra_env}})
        stack.callback(ray.shutdown)
        stack.callback(_shutdown_serve)
        deploy(config)
        base_url = f"http://{config.http_options.host}:{port}"
        wait_until_running(base_url)
        yield base_url


# Ports Serve binds on the head in HAProxy mode besides HTTP, set by these variables (with
# Ray's defaults): a second cluster on the machine needs other values (tests/conftest.py).
HAPROXY_MODE_PORTS = {"RAY_SERVE_HAPROXY_STATS_PORT": 8404,
                      "RAY_SERVE_HAPROXY_METRICS_PORT": 9101,
                      "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500}


def serve_ports(http_port: int, metrics_port: int | None) -> dict[str, int]:
    """The ports a head node's processes bind, by what sets them (for ``leftovers``)."""
    ports = {"HTTP (--port)": http_port}
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        ports |= {name: int(os.environ.get(name, default))
                  for name, default in HAPROXY_MODE_PORTS.items()}
    if metrics_port:
        ports["Ray metrics (--metrics-port)"] = metrics_port
    return ports


def _shutdown_serve() -> None:
    """Replicas hand their runs back (graceful shutdown), then the app is gone."""
    with contextlib.suppress(Exception):
        serve.shutdown()
