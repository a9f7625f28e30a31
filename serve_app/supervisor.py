"""The supervisor deployment, which is also the HTTP ingress.

The ingress is folded into the supervisor: a separate ingress deployment would add one
handle hop (~5 ms, and half the SSE throughput, measured on 2 cores) to every request and
every streamed token, and buys nothing here since every replica is stateless.
"""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from agents.settings import get_settings
from agents.system import Runtime
from serve_app.http_api import build_api
from serve_app.remote_worker import RemoteWorker
from serve_app.service import AgentService


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class SupervisorDeployment:
    async def __init__(self, workers: dict[str, DeploymentHandle]):
        settings = get_settings()
        self.runtime = await Runtime.create(settings)
        remote = {role: RemoteWorker(handle) for role, handle in workers.items()}
        graphs = {"supervisor": self.runtime.supervisor(remote)}
        graphs |= {role: self.runtime.specialist(role) for role in settings.roles}
        replica_id = serve.get_replica_context().replica_id.unique_id
        self.service = AgentService(self.runtime.redis, graphs, settings.api, replica_id)
        self.service.executor.start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.service)

    async def check_health(self) -> None:
        await self.runtime.redis.ping()
