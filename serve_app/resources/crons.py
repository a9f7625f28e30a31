"""Crons: runs created on a schedule, for a thread or thread-less (LangGraph Platform's
``/runs/crons``), kept in Redis and driven by a loop every supervisor replica runs.

A cron is one JSON document (``{crons}:cron:<id>``), listed by creation in ``{crons}:all``
and by its next tick in ``{crons}:due``. The replicas look for due crons in turn, paced
(``serve_app.runs.pace``) so that the cluster as a whole looks about every
``crons.tick_interval_s``, whatever its size; a tick runs exactly once across replicas: its
run is created by whoever first takes the tick's lease (``SET NX`` on
``{crons}:tick:<id>:<tick time>``). The run takes the one road of every run
(``serve_app.resources.run_road``: auth handlers, the creator's limits, admission, queue), as
the cron's creator; a refusal by admission (503) leaves the tick due, to be tried again on the
next round; any other refusal (the creator's limits: 429) skips the tick.

Missed ticks (the cluster was down, or busy past a tick): when a cron is found due, only
its latest tick at or before now runs, once; older missed ticks are skipped, and the next
tick is the first after now. ``schedule`` is a cron expression (5 fields; a 6th, optional,
is seconds, croniter's convention), in ``timezone`` (IANA, default UTC). Past ``end_time``
a cron stops ticking; ``enabled: false`` pauses it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from redis.asyncio import Redis

from agents.settings import CronSettings
from serve_app.keys import CRON_PREFIX as CRON
from serve_app.keys import CRON_TICK_PREFIX as TICK
from serve_app.keys import CRONS_ALL as ALL
from serve_app.keys import CRONS_DUE as DUE
from serve_app.resources.api_errors import ApiError
from serve_app.runs.pace import Replicas, one_replica, pause
from serve_app.runs.records import now_iso

log = logging.getLogger(__name__)

TICK_LEASE_S = 7 * 24 * 3600  # longer than any restart: a tick is never run twice

# (cron, its tick's time) -> the created run; raises ApiError (503: try the tick again)
CreateRun = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ApiError(422, f"timezone {name!r} is not an IANA time zone") from None


def check_schedule(schedule: str) -> str:
    """A cron expression that has a next tick (``0 0 31 2 *`` never ticks: 422)."""
    try:
        valid = len(schedule.split()) in (5, 6) and croniter.is_valid(schedule)
        if valid:
            croniter(schedule, datetime.now(UTC)).get_next(datetime)
    except (CroniterError, ValueError, KeyError):
        valid = False
    if not valid:
        raise ApiError(422, f"schedule {schedule!r} is not a cron expression that ticks "
                            "('minute hour day month weekday', optionally seconds last)")
    return schedule


def next_tick(cron: dict[str, Any], after: float) -> float | None:
    """The first tick after ``after`` (epoch seconds), None past the cron's end."""
    start = datetime.fromtimestamp(after, zone(cron.get("timezone")))
    tick = croniter(cron["schedule"], start).get_next(datetime).timestamp()
    end = cron.get("end_time")
    if end and tick > datetime.fromisoformat(end).timestamp():
        return None
    return tick


def latest_tick(cron: dict[str, Any], now: float) -> float:
    """The last tick at or before ``now``."""
    start = datetime.fromtimestamp(now + 0.001, zone(cron.get("timezone")))
    return croniter(cron["schedule"], start).get_prev(datetime).timestamp()


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


class Crons:
    """Crons in Redis: CRUD for the API, and the tick loop every replica runs."""

    def __init__(self, redis: Redis, settings: CronSettings | None = None):
        self.redis = redis
        self.settings = settings or CronSettings()

    async def get(self, cron_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(CRON + cron_id)
        return None if raw is None else json.loads(raw)

    async def _save(self, cron: dict[str, Any]) -> dict[str, Any]:
        """Store the cron and (un)schedule its next tick."""
        upcoming = next_tick(cron, time.time()) if cron["enabled"] else None
        cron["next_run_date"] = iso(upcoming)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(CRON + cron["cron_id"], json.dumps(cron))
            if upcoming is None:
                pipe.zrem(DUE, cron["cron_id"])
            else:
                pipe.zadd(DUE, {cron["cron_id"]: upcoming})
            await pipe.execute()
        return cron

    async def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields``: schedule, timezone, end_time, enabled, assistant_id, thread_id,
        on_run_completed, user_id, metadata, webhook, payload (the run body)."""
        check_schedule(fields["schedule"])
        zone(fields.get("timezone"))
        stamp = now_iso()
        cron = {"cron_id": str(uuid.uuid4()), "created_at": stamp, "updated_at": stamp,
                **fields}
        await self.redis.zadd(ALL, {cron["cron_id"]: time.time()})
        return await self._save(cron)

    async def update(self, cron_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        cron = await self.get(cron_id)
        if cron is None:
            raise ApiError(404, f"cron {cron_id!r} not found")
        if "schedule" in changes:
            check_schedule(changes["schedule"])
        if "timezone" in changes:
            zone(changes["timezone"])
        payload = {**cron["payload"], **changes.pop("payload", {})}
        return await self._save({**cron, **changes, "payload": payload,
                                 "updated_at": now_iso()})

    async def delete(self, cron_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(CRON + cron_id)
            pipe.zrem(DUE, cron_id)
            pipe.zrem(ALL, cron_id)
            removed = (await pipe.execute())[0]
        if not removed:
            raise ApiError(404, f"cron {cron_id!r} not found")

    async def search(self, where: Callable[[dict[str, Any]], bool],
                     sort_by: str = "created_at", descending: bool = True
                     ) -> list[dict[str, Any]]:
        """Every cron passing ``where``, sorted (crons are few: read them all)."""
        ids = [i.decode() if isinstance(i, bytes) else i
               for i in await self.redis.zrange(ALL, 0, -1)]
        if not ids:
            return []
        raws = await self.redis.mget([CRON + i for i in ids])
        found = [cron for cron in (json.loads(r) for r in raws if r) if where(cron)]
        return sorted(found, key=lambda c: (c.get(sort_by) is None, c.get(sort_by) or ""),
                      reverse=descending)

    # ticking
    async def tick_forever(self, create_run: CreateRun,
                           replicas: Replicas = one_replica) -> None:
        """Every replica runs this; each tick's lease makes its run happen once. The
        replicas' looks are paced: the cluster looks about every ``tick_interval_s``."""
        while True:
            try:
                await self.tick_once(create_run)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: try again next round
                log.exception("crons: tick failed")
            await pause(self.settings.tick_interval_s, replicas)

    async def tick_once(self, create_run: CreateRun, now: float | None = None) -> int:
        """Run the due crons' latest ticks; how many runs this replica created."""
        now = time.time() if now is None else now
        due = await self.redis.zrangebyscore(DUE, "-inf", now, start=0, num=100)
        created = 0
        for raw_id in due:
            cron_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            cron = await self.get(cron_id)
            if cron is None or not cron["enabled"]:
                await self.redis.zrem(DUE, cron_id)
                continue
            tick = latest_tick(cron, now)
            lease = f"{TICK}{cron_id}:{int(tick * 1000)}"
            if await self.redis.set(lease, "1", nx=True, ex=TICK_LEASE_S):
                try:
                    run = await create_run(cron, iso(tick))
                except ApiError as exc:
                    log.warning("cron %s: tick %s not run: %s", cron_id, iso(tick), exc.detail)
                    if exc.status == 503:  # admission: try this tick again next round
                        await self.redis.delete(lease)
                        continue
                    if exc.status == 404 and cron["thread_id"]:  # its thread is gone
                        await self.delete(cron_id)
                        continue
                else:
                    created += 1
                    log.info("cron %s: tick %s ran as run %s", cron_id, iso(tick),
                             run["run_id"])
            await self._advance(cron_id, now)
        return created

    async def _advance(self, cron_id: str, now: float) -> None:
        """The cron's next tick after ``now`` (re-read: it may have changed meanwhile)."""
        cron = await self.get(cron_id)
        if cron is None:
            return
        upcoming = next_tick(cron, now) if cron["enabled"] else None
        cron["next_run_date"] = iso(upcoming)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(CRON + cron_id, json.dumps(cron), xx=True)
            if upcoming is None:
                pipe.zrem(DUE, cron_id)
            else:
                pipe.zadd(DUE, {cron_id: upcoming})
            await pipe.execute()
