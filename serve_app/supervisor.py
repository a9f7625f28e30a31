"""The supervisor deployment, which is also the HTTP ingress and the run executor.

The ingress is folded into the supervisor: a separate ingress deployment would add one
handle hop (~5 ms, and half the SSE throughput, measured on 2 cores) to every request and
every streamed token, and buys nothing here since every replica is stateless.

Runs are dispatched through this deployment's own handle (``execute``), so each run is a
request that Serve's autoscaling counts, on whichever replica Serve picks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from agents.settings import get_settings
from agents.system import Runtime
from serve_app.fencing import FencedRedisSaver
from serve_app.http_api import build_api
from serve_app.leases import Leases
from serve_app.remote_worker import RemoteWorker
from serve_app.service import AgentService

log = logging.getLogger(__name__)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class SupervisorDeployment:
    async def __init__(self, workers: dict[str, DeploymentHandle]):
        settings = get_settings()
        runtime = await Runtime.create(settings)
        fenced = FencedRedisSaver(redis_client=runtime.redis,
                                  leases=Leases(runtime.redis, settings.api.lease_ttl_s))
        await fenced.asetup()
        self.runtime = dataclasses.replace(runtime, checkpointer=fenced)
        remote = {role: RemoteWorker(handle) for role, handle in workers.items()}
        graphs = {"supervisor": self.runtime.supervisor(remote)}
        graphs |= {role: self.runtime.specialist(role) for role in settings.roles}
        context = serve.get_replica_context()
        self.handle = serve.get_deployment_handle(context.deployment, context.app_name)
        self._dispatched: set[asyncio.Task] = set()
        self.service = AgentService(self.runtime.redis, graphs, settings.api,
                                    context.replica_id.unique_id, fenced, self.dispatch)
        self.service.executor.start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.service)

    async def dispatch(self, run_id: str) -> None:
        """Send the run to some replica of this deployment (maybe this one)."""
        task = asyncio.create_task(self._await(self.handle.execute.remote(run_id), run_id))
        self._dispatched.add(task)
        task.add_done_callback(self._dispatched.discard)

    @staticmethod
    async def _await(response: DeploymentResponse, run_id: str) -> None:
        try:
            await response
        except Exception as exc:  # the sweeper re-dispatches a run whose replica died
            log.warning("run %s: executing replica failed: %s", run_id, type(exc).__name__)

    async def execute(self, run_id: str) -> None:
        """One run, start to finish (or until handed back), as one Serve request."""
        await self.service.executor.execute(run_id)

    async def check_health(self) -> None:
        await self.runtime.redis.ping()

    async def __del__(self) -> None:
        """Graceful shutdown: hand unfinished runs back to the other replicas."""
        await self.service.executor.hand_back_all()
        await self.service.aclose()
