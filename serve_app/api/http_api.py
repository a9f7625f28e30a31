"""The HTTP API: LangGraph Platform's routes (so ``langgraph_sdk`` works unchanged) plus the
seed's ``/api/chat`` and ``/api/approve``, assembled from one module of routes per resource.
Every request is authenticated first unless its route is public
(``serve_app.api.routes_auth``), and no body is read past ``limits.max_body_bytes``.

Where a request goes: its route module (``routes_<resource>``), which asks ``Access`` who may
do what and calls the resource's service (``serve_app.resources``); a new run takes the one
road, ``serve_app.resources.run_road``."""

from __future__ import annotations

from fastapi import FastAPI

from agents.settings import AuthSettings, LimitsSettings
from serve_app.api.console import mount_console
from serve_app.api.errors import add_error_handlers
from serve_app.api.middleware import Authenticate, ReplicaHeader
from serve_app.api.root import Replica, compose
from serve_app.api.routes_assistants import add_assistant_routes
from serve_app.api.routes_chat import add_chat_routes
from serve_app.api.routes_crons import CronAccess, add_cron_routes
from serve_app.api.routes_health import VERSION, add_health_routes
from serve_app.api.routes_runs import add_run_routes
from serve_app.api.routes_store import add_store_routes
from serve_app.api.routes_threads import add_thread_routes
from serve_app.resources.auth import Authorizer
from serve_app.resources.limits import BodyLimit
from serve_app.resources.service import AgentService
from serve_app.telemetry.tracing import TraceMiddleware


def build_api(target: Replica | AgentService, auth: AuthSettings | Authorizer | None = None,
              limits: LimitsSettings | None = None) -> FastAPI:
    """The app of a replica's parts, or of a bare service (composed here: ``auth`` and
    ``limits`` replace the process settings' own)."""
    replica = target if isinstance(target, Replica) else compose(target, None, auth, limits)
    service, access = replica.service, replica.access
    api = FastAPI(title="Agent Cluster", version=VERSION)
    add_error_handlers(api)
    api.add_middleware(Authenticate, api=api, authorizer=replica.authorizer)
    api.add_middleware(ReplicaHeader, replica_id=lambda: service.replica_id)
    api.add_middleware(BodyLimit, limit=replica.limits.settings.max_body_bytes)
    add_store_routes(api, replica.store)
    add_cron_routes(api, CronAccess(access, replica.crons, replica.outbox))
    add_health_routes(api, service)
    add_assistant_routes(api, access)
    add_thread_routes(api, access)
    add_run_routes(api, access, replica.road)
    add_chat_routes(api, access, replica.road)
    mount_console(api, service, replica.settings)
    api.add_middleware(TraceMiddleware)  # outermost: a span and x-trace-id per request
    return api
