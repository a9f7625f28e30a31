"""Background work every supervisor replica runs besides runs: the crons' ticks and the
webhook outbox's deliveries (both state in Redis, so any replica may do any of it, and a
replica that dies loses nothing). Started with the executor's own background tasks."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from pydantic import ValidationError

from agents.settings import Settings
from serve_app.resources.api_errors import ApiError
from serve_app.resources.crons import CreateRun, Crons
from serve_app.resources.schemas import RunCreate
from serve_app.resources.webhooks import Outbox


def run_body(cron: dict[str, Any], tick: str | None = None) -> RunCreate:
    """The run one tick of ``cron`` creates (422 naming the field if it is not one); its
    metadata names the cron and the tick."""
    payload = {**cron["payload"], "assistant_id": cron["assistant_id"]}
    payload["metadata"] = {**(payload.get("metadata") or {}), "cron_id": cron["cron_id"],
                           "cron_tick": tick}
    if cron["thread_id"] is None and cron.get("on_run_completed"):
        payload["on_completion"] = cron["on_run_completed"]
    unknown = sorted(set(payload) - set(RunCreate.model_fields))
    if unknown:
        raise ApiError(422, f"unknown fields of a cron: {unknown}")
    try:
        return RunCreate.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, f"cron's run body: {exc.errors(include_url=False)}") from None


def cron_runs(service: Any, outbox: Outbox) -> CreateRun:
    """How a tick runs: the normal run creation (admission, queue), then its webhook in
    the outbox."""
    async def run(cron: dict[str, Any], tick: str) -> dict[str, Any]:
        created = await service.runs.create(cron["thread_id"], run_body(cron, tick))
        await outbox.watch(created, cron.get("webhook"))
        return created
    return run


def background_loops(service: Any, settings: Settings) -> list[Coroutine]:
    """The crons' tick loop and the outbox's drain loop of one replica, both paced by the
    live replicas (``serve_app.runs.pace``)."""
    outbox = Outbox(service.redis, settings.webhooks)
    replicas = service.executor.live_replicas
    return [Crons(service.redis, settings.crons).tick_forever(cron_runs(service, outbox),
                                                              replicas),
            outbox.drain_forever(service.runs.output, replicas)]
