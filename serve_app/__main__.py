"""``make run``: the whole cluster on the embedded default, until Ctrl-C.

Starts Redis (RedisJSON + RediSearch) and the stub model unless ``REDIS_URL`` /
``OPENAI_BASE_URL`` point elsewhere, a local Ray, and the Serve app of ``configs/local.yaml``
(``--serve-config``). ``--config path/langgraph.json`` (``make run CONFIG=...``) serves that
LangGraph project's graphs too, each in a deployment of its own (docs/own-agents.md).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

from agents import builtin
from agents.local.services import local_services
from agents.project import Project, ProjectError
from agents.settings import PROJECT_ROOT, Settings, get_settings, graph_roles, specialist_roles
from serve_app.ops.launcher import serve_cluster, service_env
from serve_app.ops.leftovers import DataDirInUse, PortInUse
from serve_app.resources.auth import check_bind

HOW_TO_TALK = """
Agent Cluster is up at {url}  (Redis: {redis}, model: {model})

  Web console: {url}/ui/   (chat: {url}/ui/chat, approval inbox: {url}/ui/inbox)

  curl -N {url}/api/chat -H 'content-type: application/json' \\
       -d '{{"thread_id": "demo", "message": "Refund $500 to order 42"}}'
  curl {url}/api/approve -H 'content-type: application/json' \\
       -d '{{"thread_id": "demo", "action": "approve", "by": "me"}}'
  (with auth on, add -H 'x-api-key: <key>'; approving needs the approver permission)

  from langgraph_sdk import get_client; client = get_client(url="{url}")

  Metrics (Prometheus): http://127.0.0.1:{metrics_port}/metrics (Ray's export: Serve's and
  ray_agent_cluster_*), and {url}/metrics (the answering replica's agent_cluster_*).
  Traces: set OTEL_EXPORTER_OTLP_ENDPOINT before make run (docs/operations.md).

Ctrl-C stops everything.
"""


def main() -> None:
    args = parse_args()
    stop_on_signals()
    try:
        serve_until_stopped(args)
    except Stop as stop:
        print(f"stopped ({stop})", flush=True)
    except (PortInUse, DataDirInUse, ProjectError) as exc:
        sys.exit(f"cannot start: {exc}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a Serve YAML given to ``--config`` (what it took before) is
    taken as ``--serve-config``, with a note."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=None,
                        help="a LangGraph project's langgraph.json to serve")
    parser.add_argument("--serve-config", type=Path,
                        default=PROJECT_ROOT / "configs" / "local.yaml",
                        help="the Serve YAML the application is deployed from")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8085,
                        help="Ray's Prometheus export port")
    args = parser.parse_args(argv)
    if args.config is not None and args.config.suffix in (".yaml", ".yml"):
        print(f"note: {args.config} taken as --serve-config (--config now takes a "
              "langgraph.json)", flush=True)
        args.serve_config, args.config = args.config, None
    return args


class Stop(Exception):
    """Raised by SIGTERM/SIGINT: unwinds whatever is running, stopping all it started."""


def stop_on_signals() -> None:
    """SIGTERM (what systemd, Docker, Kubernetes send) and SIGINT (Ctrl-C) reach only this
    process: Ray runs in a session of its own. Either one unwinds the start, at any point:
    Serve shuts down (runs in flight go back to the queue), then the Ray node, then the
    services. Further signals are ignored so that clean-up is not cut short."""
    def stop(signum: int, _frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise Stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)


def open_project(path: Path) -> Project:
    """The project read and its dependencies installed, before anything starts."""
    project = Project.load(path)
    project.install()
    return project


def check_project(project: Project, settings: Settings) -> None:
    """Every graph loaded here, in the environment replicas will have, before Ray starts:
    a graph that does not load stops the start in seconds (ProjectError)."""
    os.environ.update({**service_env(settings), **project.env_vars()})
    try:  # a role's graph must be one of the project's
        graph_roles(settings.roles, project.graphs)
    except ValueError as exc:
        raise ProjectError(str(exc)) from None
    for line in project.check(["supervisor", *specialist_roles(settings.roles)]):
        print(line, flush=True)


def serve_until_stopped(args: argparse.Namespace) -> None:
    project = open_project(args.config) if args.config else None
    with local_services(get_settings()) as settings:
        builtin.check(settings)  # configs/langgraph.json names every built-in role
        if project is not None:
            check_project(project, settings)
        with serve_cluster(settings, args.serve_config, port=args.port,
                           metrics_port=args.metrics_port, project=project) as url:
            serve_while_up(settings, url, args, project)


def serve_while_up(settings: Settings, url: str, args: argparse.Namespace,
                   project: Project | None) -> None:
    stop_on_signals()  # again: ray.init set a SIGTERM handler of its own
    print(HOW_TO_TALK.format(url=url, redis=settings.redis_url,
                             model=settings.model.base_url,
                             metrics_port=args.metrics_port), flush=True)
    if project is not None:
        print(f"Graphs of {project.path}, a deployment each: {', '.join(project.graphs)}\n",
              flush=True)
    print(check_bind(urlsplit(url).hostname or "", settings.auth), flush=True)
    while True:
        signal.pause()

if __name__ == "__main__":
    main()
