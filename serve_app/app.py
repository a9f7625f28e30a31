"""The Serve application: ``import_path: serve_app.app:build_app`` in ``configs/*.yaml``."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from agents.project import Project
from agents.settings import get_settings, graph_roles, specialist_roles
from serve_app.deployments.graph import GraphDeployment
from serve_app.deployments.specialist import SpecialistDeployment
from serve_app.deployments.supervisor import SupervisorDeployment


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Supervisor (HTTP ingress) bound to one specialist deployment per configured role,
    and, with ``args.project`` (a ``langgraph.json``, ``make run CONFIG=...``), to one
    deployment per graph of that project, named by the graph's id; a role that runs a
    project graph (``roles.<name>.graph``) is that graph's deployment."""
    roles = get_settings().roles
    workers = {role: SpecialistDeployment.options(name=role).bind(role)
               for role in specialist_roles(roles)}
    project = (args or {}).get("project")
    graphs = {graph_id: GraphDeployment.options(name=graph_id).bind(project, graph_id)
              for graph_id in (Project.load(project).graphs if project else ())}
    workers |= {role: graphs[graph] for role, graph in graph_roles(roles, graphs).items()}
    return SupervisorDeployment.options(name="supervisor").bind(workers, graphs, project)
