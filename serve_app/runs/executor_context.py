"""What every part of a replica's executor works with: Redis, the run records, the thread
leases, the pool's queue, metrics, the replica's id and its settings as of now. The
executor's ``retune`` replaces the settings here, live, so no part keeps a stale copy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from agents.settings import ApiSettings
from serve_app.runs.event_log import EventWriter
from serve_app.runs.leases import Leases
from serve_app.runs.records import Records
from serve_app.runs.run_pool import RunPool
from serve_app.telemetry.metrics import Metrics


@dataclass
class ExecutorContext:
    redis: Redis
    records: Records
    leases: Leases
    pool: RunPool
    metrics: Metrics
    replica_id: str
    settings: ApiSettings
    # graph id -> the pool of the deployment that runs it, if not this one's
    routes: dict[str, RunPool] = field(default_factory=dict)

    def pool_of(self, graph_id: str | None) -> RunPool:
        """Where ``graph_id``'s runs wait and are cancelled."""
        return self.routes.get(graph_id, self.pool)

    def event_writer(self, run: dict[str, Any]) -> EventWriter:
        """The run's event stream, with the current TTL and linger."""
        return EventWriter(self.redis, run["thread_id"], run["run_id"],
                           self.settings.event_ttl_s,
                           linger_s=self.settings.event_linger_ms / 1000)
