"""The crons' routes (LangGraph Platform's ``/runs/crons``; ``client.crons`` of the SDK), and
how a cron's tick becomes a run.

A cron belongs to whoever created it (``user_id``; with auth, others see 404), passes the
``crons`` auth handlers (``create``, ``read``, ``update``, ``delete``, ``search``), and a
thread's cron needs the right to create runs on that thread. The run fields of the body
(``input``, ``config``, ``stream_mode``...) are checked as a run body now and make each
tick's run, which runs as the cron's creator on the one road (``serve_app.resources.scheduled``);
``webhook`` gets each tick's finished run (``serve_app.resources.webhooks``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Response
from pydantic import BaseModel, ConfigDict, Field

from serve_app.api.access import Access, Caller
from serve_app.resources.api_errors import ApiError
from serve_app.resources.auth import User, matches
from serve_app.resources.crons import Crons
from serve_app.resources.scheduled import run_body
from serve_app.resources.webhooks import Outbox, check_destination

# The fields that are the cron's own; every other field of a body is the runs'.
CRON_FIELDS = ("schedule", "end_time", "enabled", "timezone", "on_run_completed", "webhook",
               "metadata")
SortField = Literal["cron_id", "assistant_id", "thread_id", "next_run_date", "end_time",
                   "created_at", "updated_at"]
SelectField = SortField | Literal["schedule", "timezone", "payload", "user_id", "metadata",
                                  "enabled", "on_run_completed"]


class CronCreate(BaseModel):
    """The cron's own fields; the rest (``extra``) is the run body of each tick."""

    model_config = ConfigDict(extra="allow")
    schedule: str = Field(min_length=1, max_length=200)
    assistant_id: str = Field(min_length=1)
    end_time: datetime | None = None
    enabled: bool = True
    timezone: str | None = None
    on_run_completed: Literal["delete", "keep"] | None = None
    webhook: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class CronPatch(BaseModel):
    model_config = ConfigDict(extra="allow")
    schedule: str | None = Field(None, min_length=1, max_length=200)
    end_time: datetime | None = None
    enabled: bool | None = None
    timezone: str | None = None
    on_run_completed: Literal["delete", "keep"] | None = None
    webhook: str | None = None
    metadata: dict[str, Any] | None = None


class CronSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assistant_id: str | None = None
    thread_id: str | None = None
    enabled: bool | None = None
    metadata: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    sort_by: SortField = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"
    select: list[SelectField] | None = None


class CronCount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assistant_id: str | None = None
    thread_id: str | None = None
    metadata: dict[str, Any] | None = None


class CronAccess:
    """Who may see and change a cron: its creator (with auth), and the ``crons`` handlers."""

    def __init__(self, access: Access, crons: Crons, outbox: Outbox):
        self.access = access
        self.crons = crons
        self.outbox = outbox

    def owns(self, user: User, cron: dict[str, Any]) -> bool:
        return self.access.auth.open or cron.get("user_id") == user.identity

    async def visible(self, user: User, cron_id: str, action: str) -> dict[str, Any]:
        where = await self.access.auth.authorize(user, "crons", action, {"cron_id": cron_id})
        cron = await self.crons.get(cron_id)
        if cron is None or not self.owns(user, cron) or not matches(cron["metadata"], where):
            raise ApiError(404, f"cron {cron_id!r} not found")
        return cron

    async def create(self, user: User, thread_id: str | None,
                     body: CronCreate) -> dict[str, Any]:
        if thread_id is not None:
            await self.access.thread(user, thread_id, "create_run")
        fields = body.model_dump(include=set(CRON_FIELDS), mode="json")
        fields["payload"] = dict(body.model_extra or {})
        fields.update(assistant_id=body.assistant_id, thread_id=thread_id,
                      user_id=None if self.access.auth.open else user.identity)
        await self.access.auth.authorize(user, "crons", "create", fields)
        if fields["webhook"] is not None:
            await check_destination(fields["webhook"], self.outbox.settings)
        run_body({**fields, "cron_id": "", "payload": fields["payload"]})  # 422 now if bad
        return await self.crons.create(fields)

    async def update(self, user: User, cron_id: str, body: CronPatch) -> dict[str, Any]:
        cron = await self.visible(user, cron_id, "update")
        changes = body.model_dump(include=set(CRON_FIELDS), exclude_unset=True, mode="json")
        if body.model_extra:
            changes["payload"] = dict(body.model_extra)
        if changes.get("webhook"):
            await check_destination(changes["webhook"], self.outbox.settings)
        run_body({**cron, **changes, "payload": {**cron["payload"],
                                                  **changes.get("payload", {})}})
        return await self.crons.update(cron_id, changes)

    async def search(self, user: User, body: CronSearch | CronCount
                     ) -> list[dict[str, Any]]:
        where = await self.access.auth.authorize(user, "crons", "search",
                                                 body.model_dump(exclude_none=True))
        wanted = {k: v for k, v in (("assistant_id", body.assistant_id),
                                    ("thread_id", body.thread_id),
                                    ("enabled", getattr(body, "enabled", None)))
                  if v is not None}

        def passes(cron: dict[str, Any]) -> bool:
            return self.owns(user, cron) and all(cron.get(k) == v for k, v in wanted.items()) \
                and matches(cron["metadata"], body.metadata) and matches(cron["metadata"], where)
        if isinstance(body, CronCount):
            return await self.crons.search(passes)
        found = await self.crons.search(passes, body.sort_by, body.sort_order == "desc")
        page = found[body.offset:body.offset + body.limit]
        if body.select:
            page = [{k: c.get(k) for k in body.select} for c in page]
        return page


def add_cron_routes(router: APIRouter | FastAPI, cron_access: CronAccess) -> None:
    """On the app itself, as ``serve_app.api.routes_store`` explains."""

    @router.post("/threads/{thread_id}/runs/crons")
    async def create_thread_cron(user: Caller, thread_id: str, body: CronCreate) -> dict:
        return await cron_access.create(user, thread_id, body)

    @router.post("/runs/crons")
    async def create_cron(user: Caller, body: CronCreate) -> dict:
        return await cron_access.create(user, None, body)

    @router.post("/runs/crons/search")
    async def search_crons(user: Caller, body: CronSearch) -> list[dict]:
        return await cron_access.search(user, body)

    @router.post("/runs/crons/count")
    async def count_crons(user: Caller, body: CronCount) -> int:
        return len(await cron_access.search(user, body))

    @router.patch("/runs/crons/{cron_id}")
    async def update_cron(user: Caller, cron_id: str, body: CronPatch) -> dict:
        return await cron_access.update(user, cron_id, body)

    @router.delete("/runs/crons/{cron_id}", status_code=204)
    async def delete_cron(user: Caller, cron_id: str) -> Response:
        await cron_access.visible(user, cron_id, "delete")
        await cron_access.crons.delete(cron_id)
        return Response(status_code=204)
