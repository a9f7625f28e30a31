"""The composition root: every object of one replica's API and background work, built once
here from explicit settings and handed down. Nothing below reads the process's settings
(``get_settings``); this module does only when a caller gives none (tests, the floor server).
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass

from langgraph.graph.state import CompiledStateGraph
from redis.asyncio import Redis

from agents.redis_saver import LeanRedisSaver
from agents.settings import AuthSettings, LimitsSettings, Settings, get_settings
from serve_app.api.access import Access
from serve_app.resources.approvals import Approvals
from serve_app.resources.auth import Authorizer
from serve_app.resources.crons import Crons
from serve_app.resources.limits import Limits
from serve_app.resources.run_road import RunRoad
from serve_app.resources.scheduled import background_loops
from serve_app.resources.service import AgentService
from serve_app.resources.store import StoreService
from serve_app.resources.webhooks import Outbox
from serve_app.telemetry.metrics import Metrics


@dataclass(frozen=True)
class Replica:
    """One replica's parts: the service, who may do what, the limits, the run road, the
    crons, the store and the webhook outbox (shared by the routes and the background loops)."""

    settings: Settings
    service: AgentService
    authorizer: Authorizer
    limits: Limits
    approvals: Approvals
    outbox: Outbox
    crons: Crons
    store: StoreService
    road: RunRoad
    access: Access

    def background_loops(self) -> list[Coroutine]:
        """The crons' ticks (each run on the road, as its cron's owner) and the outbox's
        deliveries, to start with the executor's own background work."""
        return background_loops(self.road, self.crons)


def compose(service: AgentService, settings: Settings | None = None,
            auth: AuthSettings | Authorizer | None = None,
            limits: LimitsSettings | None = None) -> Replica:
    """The parts over ``service``; ``auth`` and ``limits`` replace the settings' own."""
    settings = settings or get_settings()
    authorizer = auth if isinstance(auth, Authorizer) else \
        Authorizer.from_settings(auth or settings.auth)
    limiter = Limits(service.redis, limits or settings.limits, per_user=not authorizer.open)
    approvals = Approvals(service, authorizer.settings.approver_permission)
    outbox = Outbox(service.redis, settings.webhooks)
    return Replica(
        settings=settings, service=service, authorizer=authorizer, limits=limiter,
        approvals=approvals, outbox=outbox, crons=Crons(service.redis, settings.crons),
        store=StoreService(service.redis, authorizer, settings),
        road=RunRoad(service, authorizer, limiter, approvals, outbox),
        access=Access(service, authorizer, limiter, approvals))


def serving_replica(settings: Settings, redis: Redis, graphs: dict[str, CompiledStateGraph],
                    replica_id: str, checkpointer: LeanRedisSaver,
                    metrics: Metrics) -> Replica:
    """A Serve replica's parts: its service over these graphs, then the rest."""
    service = AgentService(redis, graphs, settings.api, replica_id, checkpointer,
                           metrics=metrics, retention=settings.retention)
    return compose(service, settings)
