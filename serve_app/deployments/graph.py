"""One graph of a user's project (``langgraph.json``) per binding: the replicas that run its
runs, each graph under its own name with its own replicas (``graph_deployments`` settings).

They take no HTTP requests (only the supervisor's calls of a role that runs the graph,
``roles.<name>.graph``, through the worker seam, as a specialist's): the ingress
(``deployments.supervisor``) admits and records a run and queues it in the graph's own
pool (``graph_pool``); these replicas pull it from there as the supervisor's replicas pull
theirs, with the same leases, checkpoints per step (through the fenced saver), re-claim
after a replica's death, cancels and event streams.
Serve scales them on that pool (``autoscaling.runs_policy``), so a heavy graph takes
replicas of its own, not the others' slots.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from ray import serve

from agents import telemetry
from agents.checkpoint import check_redis, create_redis
from agents.memory import create_store
from agents.project import Project
from agents.settings import get_settings, graph_roles, specialist_roles
from agents.workers import GraphWorker
from serve_app.deployments.remote_worker import serve_worker
from serve_app.deployments.run_puller import RunPuller
from serve_app.resources.service_context import ServiceContext
from serve_app.runs.executor import RunExecutor
from serve_app.runs.fencing import FencedRedisSaver
from serve_app.telemetry import tracing
from serve_app.telemetry.metrics import RayMetrics


def graph_pool(run_pool: str, graph_id: str) -> str:
    """The pool a project graph's runs wait in (``api.run_pool`` is the built-ins')."""
    return f"{run_pool}:graph:{graph_id}"


def route_graphs(executor: RunExecutor, graph_ids: Iterable[str], run_pool: str,
                 built_ins: Iterable[str] = ()) -> None:
    """Where each graph's runs go: a project graph's to its own pool, a built-in's to
    ``run_pool``. Every replica that ends runs needs all of it: a thread's next run, made
    ready as the previous one ends, may be another graph's."""
    for graph_id in graph_ids:
        executor.route(graph_id, graph_pool(run_pool, graph_id))
    for graph_id in built_ins:
        executor.route(graph_id, run_pool)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100,
                  health_check_period_s=2, graceful_shutdown_wait_loop_s=0.5)
class GraphDeployment(RunPuller):
    async def __init__(self, project: str, graph_id: str):
        settings = get_settings()
        replica_id = serve.get_replica_context().replica_id.unique_id
        tracing.configure(graph_id, replica_id)
        redis = create_redis(settings.redis_url, settings.redis)
        await check_redis(redis, settings.redis_url)
        fenced = FencedRedisSaver(redis_client=redis,
                                  ttl_minutes=settings.redis.checkpoint_ttl_minutes)
        tracing.instrument_checkpointer(fenced)
        loaded = Project.load(project)
        graph = await loaded.load_graph(graph_id, fenced, await create_store(redis))
        run_pool = settings.api.run_pool
        self.service = ServiceContext(redis, {graph_id: graph}, settings.api, replica_id,
                                      fenced, pool=graph_pool(run_pool, graph_id),
                                      metrics=RayMetrics(), retention=settings.retention)
        telemetry.set_meter(self.service.metrics)  # model, node and tool metrics too
        route_graphs(self.service.executor, loaded.graphs, run_pool,
                     ["supervisor", *specialist_roles(settings.roles)])
        self.graph_id = graph_id  # and the supervisor's calls of the roles that run it
        self.worker = GraphWorker({role: graph for role, wanted in graph_roles(
            settings.roles, loaded.graphs).items() if wanted == graph_id},
            token_linger_s=settings.token_linger_ms / 1000)
        self.service.executor.start()

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """One call of the supervisor to a role that runs this graph (``agents.workers``),
        on the role's sub-thread, beside the runs this replica pulls."""
        async for event in serve_worker(self.worker, self.graph_id, request):
            yield event
