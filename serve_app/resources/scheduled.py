"""Background work every supervisor replica runs besides runs: the crons' ticks and the
webhook outbox's deliveries (both state in Redis, so any replica may do any of it, and a
replica that dies loses nothing). Started with the executor's own background tasks.

A tick's run takes the one road (``serve_app.resources.run_road``) as its cron's owner: the
auth handlers, the owner's limits and admission refuse it as they would the owner's own."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from pydantic import ValidationError

from serve_app.resources.api_errors import ApiError
from serve_app.resources.auth import ANONYMOUS, User
from serve_app.resources.crons import CreateRun, Crons
from serve_app.resources.run_road import RunRequest, RunRoad
from serve_app.resources.schemas import RunCreate


def run_body(cron: dict[str, Any], tick: str | None = None) -> RunCreate:
    """The run one tick of ``cron`` creates (422 naming the field if it is not one); its
    metadata names the cron and the tick, its webhook is the cron's."""
    payload = {**cron["payload"], "assistant_id": cron["assistant_id"]}
    payload["metadata"] = {**(payload.get("metadata") or {}), "cron_id": cron["cron_id"],
                           "cron_tick": tick}
    if cron["thread_id"] is None and cron.get("on_run_completed"):
        payload["on_completion"] = cron["on_run_completed"]
    unknown = sorted(set(payload) - set(RunCreate.model_fields))
    if unknown:
        raise ApiError(422, f"unknown fields of a cron: {unknown}")
    if cron.get("webhook"):
        payload["webhook"] = cron["webhook"]
    try:
        return RunCreate.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, f"cron's run body: {exc.errors(include_url=False)}") from None


def owner(cron: dict[str, Any]) -> User:
    """Who a cron's runs run as: its creator (none in the open mode)."""
    return User(cron["user_id"]) if cron.get("user_id") else ANONYMOUS


def cron_runs(road: RunRoad) -> CreateRun:
    """How a tick runs: on the road, as the cron's owner."""
    async def run(cron: dict[str, Any], tick: str) -> dict[str, Any]:
        return await road.start(RunRequest(user=owner(cron), thread_id=cron["thread_id"],
                                           body=run_body(cron, tick)))
    return run


def background_loops(road: RunRoad, crons: Crons) -> list[Coroutine]:
    """The crons' tick loop and the outbox's drain loop of one replica, both paced by the
    live replicas (``serve_app.runs.pace``)."""
    service = road.service
    replicas = service.executor.live_replicas
    return [crons.tick_forever(cron_runs(road), replicas),
            road.outbox.drain_forever(service.runs.output, replicas)]
