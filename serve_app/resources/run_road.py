"""The one road of a run a user asks for: ``POST .../runs``, ``/stream``, ``/wait``,
``runs/batch``, thread-less runs, delayed runs (``after_seconds``), ``/api/chat``,
approvals' resumes, and each tick of a cron (as its owner) all make a ``RunRequest`` and call
``RunRoad.start``.

The steps, in order, each in one place: the limits per request, the auth handler
(``threads:create_run``), admission (past capacity a refusal costs no Redis read), the
webhook's destination, the thread (visible to the user, or created for the run), the
approver rule for a command, the limits per user, then ``RunsService.record`` (the graph's
checks, the thread's lock, the record, the queue) and what follows a made run (the user's
counts, its webhook). A refused run stores nothing but the approval log's entries, which are
then marked not applied. Per-user limits apply to authenticated users; the open loopback
mode has no users to tell apart (``Limits.per_user``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from agents.memory import AUTH_USER_KEY
from serve_app.resources.api_errors import ApiError
from serve_app.resources.approvals import Approvals
from serve_app.resources.auth import Authorizer, User, matches
from serve_app.resources.budgets import refuse_over_budget
from serve_app.resources.limits import Limits
from serve_app.resources.schemas import RunConfig, RunCreate
from serve_app.resources.service import AgentService
from serve_app.resources.webhooks import Outbox, check_destination


def equalities(where: dict[str, Any] | None) -> dict[str, Any]:
    """The plain ``key == value`` parts of a filter: what a new resource must carry to
    be visible to the one who creates it."""
    found = {}
    for key, condition in (where or {}).items():
        if isinstance(condition, dict) and set(condition) == {"$eq"}:
            found[key] = condition["$eq"]
        elif not isinstance(condition, dict):
            found[key] = condition
    return found


def metadata_of(value: dict[str, Any], fallback: Any = None) -> dict[str, Any]:
    """``value["metadata"]`` as a handler left it (a copy; not a dict: empty)."""
    metadata = value.get("metadata", fallback)
    return dict(metadata) if isinstance(metadata, dict) else {}


class RunRequest(BaseModel):
    """A run as asked, parsed once: who asks, on which thread (None: a thread-less run),
    the body, the stream modes the route adds. The road's steps make changed copies."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    user: User
    thread_id: str | None = None
    body: RunCreate
    extra_modes: tuple[str, ...] = ()
    admitted: bool = False  # admission let it in already (a batch is admitted as a whole)

    def handler_value(self) -> dict[str, Any]:
        """What the ``threads:create_run`` handler sees (and may change)."""
        body = self.body
        return {
            "thread_id": self.thread_id, "assistant_id": body.assistant_id,
            "metadata": dict(body.metadata or {}),
            "multitask_strategy": body.multitask_strategy,
            "if_not_exists": body.if_not_exists,
            "kwargs": {"input": body.input,
                       "command": body.command.model_dump() if body.command else None,
                       "config": body.config.model_dump() if body.config else None,
                       "stream_mode": body.stream_mode},
        }

    def with_body(self, **changes: Any) -> RunRequest:
        return self.model_copy(update={"body": self.body.model_copy(update=changes)})


class RunRoad:
    def __init__(self, service: AgentService, authorizer: Authorizer, limits: Limits,
                 approvals: Approvals, outbox: Outbox):
        self.service = service
        self.auth = authorizer
        self.limits = limits
        self.approvals = approvals
        self.outbox = outbox

    async def start(self, ask: RunRequest) -> dict[str, Any]:
        """The run made and queued, or ``ApiError`` from the first step that refuses it."""
        body = ask.body
        self.limits.check_message_sizes(body.input, body.command and body.command.update)
        ask, where = await self.authorize(ask)
        if not ask.admitted:  # past capacity: refused in milliseconds, before any read
            await self.service.runs.admit(body.resumes, body.assistant_id)
        if body.webhook is not None:  # 422 if it may not receive webhooks
            await check_destination(body.webhook, self.outbox.settings)
        ask = self.as_user(ask)
        thread, new_thread_metadata = await self.thread(ask, where)
        ask, entries = await self.decide(ask, thread)  # the approval log's entries
        try:
            await self.limits.check_runs(ask.user.identity)  # 429s; the token is taken last
            await refuse_over_budget(ask.user.identity, self.limits.per_user)
            await self.limits.take_run(ask.user.identity)
            run = await self.service.runs.record(ask.thread_id, ask.body, list(ask.extra_modes),
                                                 new_thread_metadata, thread)
        except ApiError as exc:
            if entries:
                await self.approvals.not_applied(ask.thread_id, entries, exc.detail)
            raise
        await self.made(ask, run, thread)
        return run

    async def authorize(self, ask: RunRequest) -> tuple[RunRequest, dict[str, Any] | None]:
        """The handler's filter; its changes to the metadata are the run's."""
        value = ask.handler_value()
        where = await self.auth.authorize(ask.user, "threads", "create_run", value)
        return ask.with_body(metadata=metadata_of(value, ask.body.metadata)), where

    def as_user(self, ask: RunRequest) -> RunRequest:
        """With auth, the run's long-term memories are its user's (``agents.memory``)."""
        if self.auth.open:
            return ask
        config = ask.body.config or RunConfig()
        configurable = {**config.configurable, AUTH_USER_KEY: ask.user.identity}
        return ask.with_body(config=config.model_copy(update={"configurable": configurable}))

    async def thread(self, ask: RunRequest, where: dict[str, Any] | None
                     ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The run's thread if it exists (404 if the filter hides it); else, if the run
        creates one, the metadata it is created with (the handlers' owner), within the
        user's threads limit."""
        thread_id = ask.thread_id
        thread = await self.service.records.get_thread(thread_id) if thread_id else None
        if thread is not None:
            if not matches(thread.get("metadata"), where):
                raise ApiError(404, f"thread {thread_id!r} not found")
            return thread, None
        if thread_id is not None and ask.body.if_not_exists != "create":
            return None, None  # 404 from RunsService.record
        create = {"thread_id": thread_id, "metadata": dict(ask.body.metadata or {})}
        created_where = await self.auth.authorize(ask.user, "threads", "create", create)
        await self.limits.check_threads(ask.user.identity)
        return None, {**equalities(where), **equalities(created_where), **metadata_of(create)}

    async def decide(self, ask: RunRequest, thread: dict[str, Any] | None
                     ) -> tuple[RunRequest, list[str]]:
        """A command on a thread passes the approver rule: a resume's decisions are
        logged (and rewritten to point at their entries), any other command is guarded."""
        command = ask.body.command
        if thread is None or command is None:
            return ask, []
        if command.resume is None:
            await self.approvals.guard_state_change(ask.user, self.auth.open, thread,
                                                    "a command (update/goto)")
            return ask, []
        resume, entries = await self.approvals.record_resume(ask.user, self.auth.open, thread,
                                                             command.resume)
        return ask.with_body(command=command.model_copy(update={"resume": resume})), entries

    async def made(self, ask: RunRequest, run: dict[str, Any],
                   thread: dict[str, Any] | None) -> None:
        """The run counts as its user's (and a thread it made), its webhook is watched."""
        await self.limits.ran(ask.user.identity, run)
        if thread is None:
            await self.limits.owns(ask.user.identity, run["thread_id"])
        await self.outbox.watch(run, ask.body.webhook)
