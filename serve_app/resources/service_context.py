"""What every resource service shares: Redis, the records, the graphs, the settings, this
replica's identity and its run executor. One object, built once per replica, handed to
``AssistantsService``, ``ThreadsService``, ``RunsService`` (and any later resource's)."""

from __future__ import annotations

from typing import Any

from langgraph.graph.state import CompiledStateGraph
from redis.asyncio import Redis

from agents.redis_saver import LeanRedisSaver
from agents.settings import ApiSettings, RetentionSettings
from serve_app.runs.admission import Admission
from serve_app.runs.event_feed import EventFeed
from serve_app.runs.executor import RunExecutor
from serve_app.runs.records import TERMINAL, Records
from serve_app.runs.retention import Retention
from serve_app.telemetry.metrics import Metrics


class ServiceContext:
    def __init__(self, redis: Redis, graphs: dict[str, CompiledStateGraph],
                 settings: ApiSettings, replica_id: str, checkpointer: LeanRedisSaver,
                 pool: str | None = None, metrics: Metrics | None = None,
                 retention: RetentionSettings | None = None):
        self.redis = redis
        self.records = Records(redis)
        self.graphs = graphs
        self.settings = self.base_settings = settings
        self.replica_id = replica_id
        self.metrics = metrics or Metrics()
        self.retention = Retention(redis, checkpointer, retention or RetentionSettings(),
                                   self.records, self.metrics)
        self.executor = RunExecutor(redis, graphs, settings, replica_id, checkpointer, pool,
                                    self.metrics, self.retention)
        self.feed = EventFeed(redis)
        self.admission = Admission(self.executor.pool, self.metrics, self.executor.idle_for,
                                   self.executor.slots_full)
        self._graph_admissions: dict[str, Admission] = {}

    def admission_for(self, graph_id: str | None) -> Admission:
        """Who judges a new run of ``graph_id``: its own pool's load when a deployment of its
        own runs it (a project graph), else this replica's pool, slots included."""
        pool = self.executor.context.pool_of(graph_id)
        if pool is self.executor.pool:
            return self.admission
        if graph_id not in self._graph_admissions:
            self._graph_admissions[graph_id] = Admission(pool, self.metrics)
        return self._graph_admissions[graph_id]

    def retune(self, **limits: Any) -> ApiSettings:
        """Admission limits (``api.*`` fields) over the replica's own settings, live; no
        limits: back to its own settings."""
        unknown = sorted(set(limits) - set(ApiSettings.model_fields))
        if unknown:
            raise ValueError(f"not api settings: {unknown}; "
                             f"known: {sorted(ApiSettings.model_fields)}")
        self.settings = ApiSettings.model_validate({**self.base_settings.model_dump(),
                                                    **limits})
        self.executor.retune(self.settings)
        return self.settings

    async def aclose(self) -> None:
        """Stop the executor's background work and the event feed (not the runs)."""
        await self.executor.aclose()
        await self.feed.aclose()

    async def inflight_runs(self, thread_id: str, queued: list[str] | None = None
                            ) -> list[dict[str, Any]]:
        """The thread's runs queued or running (its lease queue, not yet terminal);
        ``queued``: the run ids of its queue, if just read."""
        if queued is None:
            queued = await self.executor.leases.queued(thread_id)
        runs = await self.records.get_runs(thread_id, queued)
        return [r for r in runs if r and r["status"] not in TERMINAL]
