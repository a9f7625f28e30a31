"""The Serve application: ``import_path: serve_app.app:build_app`` in ``configs/*.yaml``."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from agents.settings import get_settings
from serve_app.deployments.specialist import SpecialistDeployment
from serve_app.deployments.supervisor import SupervisorDeployment


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Supervisor (HTTP ingress) bound to one specialist deployment per configured role."""
    specialists = {
        role: SpecialistDeployment.options(name=role).bind(role)
        for role in get_settings().roles
    }
    return SupervisorDeployment.options(name="supervisor").bind(specialists)
