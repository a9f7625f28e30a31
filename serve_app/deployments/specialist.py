"""One specialist role per binding: the same class serves researcher, coder and reviewer,
each bound under its role's name with its own replicas and autoscaling in ``configs/``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from agents import telemetry
from agents.settings import get_settings
from agents.system import Runtime
from serve_app.deployments.remote_worker import serve_worker
from serve_app.resources.approvals import RecordedApprovals
from serve_app.telemetry import tracing
from serve_app.telemetry.metrics import RayMetrics


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class SpecialistDeployment:
    async def __init__(self, role: str):
        self.role = role
        tracing.configure(role, serve.get_replica_context().replica_id.unique_id)
        telemetry.set_meter(RayMetrics())  # exported by Ray's metrics endpoint
        self.runtime = await Runtime.create(get_settings())
        # a sensitive call runs only if the API recorded its approval (resources.approvals)
        self.runtime.approval_verifier = RecordedApprovals(self.runtime.redis)
        tracing.instrument_checkpointer(self.runtime.checkpointer)
        self.worker = self.runtime.worker([role])

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Token, progress and result events of one specialist call (see agents.workers)."""
        async for event in serve_worker(self.worker, self.role, request):
            yield event

    async def check_health(self) -> None:
        await self.runtime.redis.ping()
