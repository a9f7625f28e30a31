"""The supervisor deployment: the HTTP ingress, the supervisor graph and the run executor.

The ingress is folded into the supervisor: a separate ingress deployment would add one
handle hop (~5 ms, and half the SSE throughput, measured on 2 cores) to every request and
every streamed token, and buys nothing here since every replica is stateless.

Runs are not dispatched to replicas: each replica pulls them from the pool's queue in
Redis when it has a free slot (``serve_app.runs.executor``). Serve's autoscaling sees that
queue through ``record_autoscaling_stats`` and ``serve_app.deployments.autoscaling.runs_policy``.
"""

from __future__ import annotations

import dataclasses
import logging

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from agents import builtin, telemetry
from agents.project import Project
from agents.settings import get_settings
from agents.system import Runtime
from serve_app.api.http_api import build_api
from serve_app.api.root import serving_replica
from serve_app.deployments.graph import route_graphs
from serve_app.deployments.remote_worker import RemoteWorker
from serve_app.deployments.run_puller import RunPuller
from serve_app.resources.approvals import RecordedApprovals
from serve_app.resources.auth import check_bind
from serve_app.runs.fencing import FencedRedisSaver
from serve_app.telemetry import tracing
from serve_app.telemetry.metrics import RayMetrics

log = logging.getLogger(__name__)


def serve_http_host() -> str | None:
    """The address Serve's HTTP ingress binds (its http_options), None if unknown."""
    try:
        from ray.serve.context import _get_global_client
        return _get_global_client().http_config.host
    except Exception as exc:
        log.error("could not read Serve's http_options host: %r", exc)
        return None


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class SupervisorDeployment(RunPuller):
    async def __init__(self, workers: dict[str, DeploymentHandle],
                       project_graphs: dict[str, DeploymentHandle] | None = None,
                       project: str | None = None):
        settings = get_settings()
        host = serve_http_host()
        if host is not None:  # refuse to start open on a non-loopback address
            log.warning("%s", check_bind(host, settings.auth))
        runtime = await Runtime.create(settings)
        fenced = FencedRedisSaver(redis_client=runtime.redis,
                                  ttl_minutes=settings.redis.checkpoint_ttl_minutes)
        tracing.instrument_checkpointer(fenced)
        self.runtime = dataclasses.replace(runtime, checkpointer=fenced,
                                           approval_verifier=RecordedApprovals(runtime.redis))
        remote = {role: RemoteWorker(handle) for role, handle in workers.items()}
        with builtin.serving(self.runtime, remote):  # configs/langgraph.json, as anyone's
            graphs = await Project.load(builtin.PROJECT).load_graphs(fenced, self.runtime.store)
        if project:  # a user's graphs, for reads here; their runs go to their deployments
            graphs |= await Project.load(project).load_graphs(fenced, self.runtime.store)
        context = serve.get_replica_context()
        tracing.configure("supervisor", context.replica_id.unique_id)
        self.replica = serving_replica(settings, self.runtime.redis, graphs,
                                       context.replica_id.unique_id, fenced, RayMetrics())
        self.service = self.replica.service
        telemetry.set_meter(self.service.metrics)  # model, node and tool metrics too
        route_graphs(self.service.executor, project_graphs or {}, settings.api.run_pool)
        self.service.executor.start(*self.replica.background_loops())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.replica)

    def reconfigure(self, user_config: dict) -> None:
        """The deployment's ``user_config`` (``api.*`` admission limits) applied live:
        Serve calls this at start and on every config update, without a restart."""
        self.service.retune(**user_config)
