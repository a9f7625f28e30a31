"""What Serve asks of every replica that pulls runs from a pool (the supervisor's, a project
graph's): its load for autoscaling, its health, and a shutdown that hands its runs back."""

from __future__ import annotations

from serve_app.resources.service_context import ServiceContext


class RunPuller:
    service: ServiceContext

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom autoscaling metrics: runs here, runs waiting in the pool's queue, the
        share of run requests refused (``serve_app.deployments.autoscaling``)."""
        executor = self.service.executor
        return {"runs_running": executor.running, "runs_queued": executor.load.queued,
                "run_slots": executor.slots,
                "refused_share": self.service.admission.refused_share}

    async def check_health(self) -> None:
        await self.service.redis.ping()

    async def __del__(self) -> None:
        """Graceful shutdown: hand unfinished runs back to the other replicas."""
        await self.service.executor.hand_back_all()
        await self.service.aclose()
