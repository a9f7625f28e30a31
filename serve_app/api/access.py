"""Authorization applied to resources: what the routes call before ``AgentService`` acts.

Every thread a request names passes the ``threads`` handler of the route's action
(``serve_app.api.routes_auth``) and, when that handler returns a filter, the thread's metadata
must match it: otherwise the thread answers 404, exactly as one that does not exist (no
existence leak). Searches apply the filter to every record; a handler's changes to
``value["metadata"]`` are what is stored. Runs and their streams belong to their thread, so
reading, joining, streaming, cancelling or deleting a run is checked on its thread.
Creating a run also passes the approver rule (``serve_app.resources.approvals``) and the per-user
limits (``serve_app.resources.limits``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from agents.memory import AUTH_USER_KEY
from agents.settings import WebhookSettings, get_settings
from serve_app.resources.api_errors import ApiError
from serve_app.resources.approvals import Approvals
from serve_app.resources.auth import Authorizer, User, matches
from serve_app.resources.limits import Limits
from serve_app.resources.schemas import RunConfig
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


def _metadata(value: dict[str, Any], fallback: Any = None) -> dict[str, Any]:
    metadata = value.get("metadata", fallback)
    return dict(metadata) if isinstance(metadata, dict) else {}


class Access:
    def __init__(self, service: AgentService, authorizer: Authorizer, limits: Limits,
                 webhooks: WebhookSettings | None = None):
        self.service = service
        self.auth = authorizer
        self.limits = limits
        self.approvals = Approvals(service, authorizer.settings.approver_permission)
        self.outbox = Outbox(service.redis, webhooks or get_settings().webhooks)

    @staticmethod
    def user(request: Request) -> User:
        user = getattr(request.state, "user", None)
        if user is None:  # the middleware authenticates every non-public route
            raise ApiError(401, "not authenticated")
        return user

    @property
    def per_user(self) -> bool:
        """Per-user limits apply (not in the open mode: it has no users)."""
        return not self.auth.open

    async def visible(self, user: User, thread_id: str, action: str,
                      value: dict[str, Any] | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The thread and the handler's value, or 404 if it does not exist or the handler's
        filter hides it."""
        value = {"thread_id": thread_id, **(value or {})}
        where = await self.auth.authorize(user, "threads", action, value)
        thread = await self.service.records.get_thread(thread_id)
        if thread is None or not matches(thread.get("metadata"), where):
            raise ApiError(404, f"thread {thread_id!r} not found")
        return thread, value

    async def thread(self, request: Request, thread_id: str, action: str = "read",
                     value: dict[str, Any] | None = None) -> dict[str, Any]:
        thread, _ = await self.visible(self.user(request), thread_id, action, value)
        return thread

    # threads
    async def create_thread(self, request: Request, body: Any) -> dict[str, Any]:
        user = self.user(request)
        value = {"thread_id": body.thread_id, "metadata": dict(body.metadata or {}),
                 "if_exists": body.if_exists, "ttl": body.ttl}
        where = await self.auth.authorize(user, "threads", "create", value)
        metadata = {**equalities(where), **_metadata(value)}
        if body.thread_id:
            existing = await self.service.records.get_thread(body.thread_id)
            if existing is not None:
                if body.if_exists == "raise" or not matches(existing.get("metadata"), where):
                    raise ApiError(409, f"thread {body.thread_id!r} already exists")
                return await self.service.threads.view(existing)
        if self.per_user:
            await self.limits.check_threads(user.identity)
        view = await self.service.threads.create(body.thread_id, metadata, body.ttl,
                                                body.if_exists)
        if self.per_user:
            await self.limits.owns(user.identity, view["thread_id"])
        return view

    async def search_threads(self, request: Request, body: Any) -> list[dict[str, Any]]:
        value = {"metadata": dict(body.metadata or {}), "status": body.status,
                 "limit": body.limit, "offset": body.offset}
        where = await self.auth.authorize(self.user(request), "threads", "search", value)
        if where is None:
            return await self.service.threads.search(body)
        return await self.service.threads.search(
            body, lambda record: matches(record.get("metadata"), where))

    async def count_threads(self, request: Request, body: Any) -> int:
        value = {"metadata": dict(body.metadata or {}), "status": body.status,
                 "values": body.values}
        where = await self.auth.authorize(self.user(request), "threads", "search", value)
        return await self.service.threads.count(
            body, None if where is None else lambda r: matches(r.get("metadata"), where))

    async def copy_thread(self, request: Request, thread_id: str) -> dict[str, Any]:
        """A copy of a thread the user may read, counted as a thread the user made."""
        user = self.user(request)
        await self.visible(user, thread_id, "read")
        if self.per_user:
            await self.limits.check_threads(user.identity)
        view = await self.service.threads.copy(thread_id)
        if self.per_user:
            await self.limits.owns(user.identity, view["thread_id"])
        return view

    async def update_thread(self, request: Request, thread_id: str,
                            body: Any) -> dict[str, Any]:
        user = self.user(request)
        value = {"thread_id": thread_id, "metadata": dict(body.metadata)}
        where = await self.auth.authorize(user, "threads", "update", value)
        thread = await self.service.records.get_thread(thread_id)
        if thread is None or not matches(thread.get("metadata"), where):
            raise ApiError(404, f"thread {thread_id!r} not found")
        metadata = _metadata(value)
        if not matches({**thread["metadata"], **metadata}, where):
            raise ApiError(403, "this metadata would take the thread out of your reach")
        return await self.service.threads.update(thread_id, metadata, body.ttl)

    async def delete_thread(self, request: Request, thread_id: str) -> None:
        await self.thread(request, thread_id, "delete")
        await self.service.threads.delete(thread_id)

    async def prune_threads(self, request: Request, body: Any) -> dict[str, int]:
        """Only the threads the user may delete; others are skipped as if absent."""
        user = self.user(request)
        allowed = []
        for thread_id in dict.fromkeys(body.thread_ids):
            try:
                await self.visible(user, thread_id, "delete")
            except ApiError as exc:
                if exc.status != 404:
                    raise
                continue
            allowed.append(thread_id)
        if not allowed:
            return {"pruned_count": 0}
        return await self.service.threads.prune(allowed, body.strategy)

    async def update_state(self, request: Request, thread_id: str, body: Any) -> dict:
        user = self.user(request)
        thread, _ = await self.visible(user, thread_id, "update",
                                       {"values": body.values, "as_node": body.as_node})
        self.limits.check_messages(body.values)
        await self.approvals.guard_state_change(user, self.auth.open, thread,
                                                "a state update")
        return await self.service.threads.update_state(thread_id, body.values, body.as_node,
                                               body.target)

    async def approval_log(self, request: Request, thread_id: str, after: str | None,
                           limit: int) -> list[dict[str, Any]]:
        await self.thread(request, thread_id, "read")
        return await self.approvals.log.read(thread_id, after, limit)

    # runs
    async def create_run(self, request: Request, thread_id: str | None, body: Any,
                         extra_modes: list[str] | None = None,
                         admitted: bool = False) -> dict[str, Any]:
        """``admitted``: admission already let it in (a batch is admitted as a whole);
        else it is asked right after authorization, so a refusal past capacity costs no
        Redis read and no wait behind the runs it protects."""
        user = self.user(request)
        command = body.command
        self.limits.check_messages(body.input, command.update if command else None)
        value = {
            "thread_id": thread_id, "assistant_id": body.assistant_id,
            "metadata": dict(body.metadata or {}),
            "multitask_strategy": body.multitask_strategy,
            "if_not_exists": body.if_not_exists,
            "kwargs": {"input": body.input,
                       "command": command.model_dump() if command else None,
                       "config": body.config.model_dump() if body.config else None,
                       "stream_mode": body.stream_mode},
        }
        where = await self.auth.authorize(user, "threads", "create_run", value)
        if not admitted:  # past capacity, refused before any read: in milliseconds
            await self.service.runs.admit(command is not None and command.resume is not None)
            admitted = True
        body.metadata = _metadata(value, body.metadata)
        webhook = getattr(body, "webhook", None)
        if webhook is not None:  # refused now (422) if it may not receive webhooks
            await check_destination(webhook, self.outbox.settings)
        if not self.auth.open:  # the run's long-term memories are its user's (agents.memory)
            body.config = body.config or RunConfig()
            body.config.configurable[AUTH_USER_KEY] = user.identity
        thread = await self.service.records.get_thread(thread_id) if thread_id else None
        thread_metadata = None
        if thread is not None:
            if not matches(thread.get("metadata"), where):
                raise ApiError(404, f"thread {thread_id!r} not found")
        elif thread_id is None or body.if_not_exists == "create":
            create = {"thread_id": thread_id, "metadata": dict(body.metadata or {})}
            created_where = await self.auth.authorize(user, "threads", "create", create)
            thread_metadata = {**equalities(where), **equalities(created_where),
                               **_metadata(create)}
            if self.per_user:
                await self.limits.check_threads(user.identity)
        entries: list[str] = []
        if thread is not None and command is not None:
            if command.resume is not None:
                command.resume, entries = await self.approvals.record_resume(
                    user, self.auth.open, thread, command.resume)
            else:
                await self.approvals.guard_state_change(user, self.auth.open, thread,
                                                        "a command (update/goto)")
        try:
            if self.per_user:
                await self.limits.check_runs(user.identity)
                await self.limits.take_run(user.identity)
            run = await self.service.runs.create(thread_id, body, extra_modes, thread_metadata,
                                                 admitted, thread)
        except ApiError as exc:
            if entries:
                await self.approvals.not_applied(thread_id, entries, exc.detail)
            raise
        if self.per_user:
            await self.limits.ran(user.identity, run)
            if thread is None:
                await self.limits.owns(user.identity, run["thread_id"])
        await self.outbox.watch(run, webhook)  # its webhook, approvals it leaves pending
        return run

    async def approve(self, request: Request, body: Any, run_body: Any) -> dict[str, Any]:
        """``/api/approve``: a resume run on the thread, through the same checks."""
        thread, _ = await self.visible(self.user(request), body.thread_id, "create_run")
        if not await self.approvals.pending(thread):
            raise ApiError(409, f"thread {body.thread_id!r} has no pending approval")
        return await self.create_run(request, body.thread_id, run_body, extra_modes=["chat"])

    # assistants
    async def assistants(self, request: Request, action: str,
                         value: dict[str, Any]) -> dict[str, Any] | None:
        return await self.auth.authorize(self.user(request), "assistants", action, value)

    async def assistant(self, request: Request, assistant_id: str,
                        action: str = "read") -> dict[str, Any]:
        """A readable assistant (404 if the handler's filter hides it)."""
        where = await self.assistants(request, action, {"assistant_id": assistant_id})
        found = await self.service.assistants.find(assistant_id)
        if not matches(found["metadata"], where):
            raise ApiError(404, f"assistant {assistant_id!r} not found")
        return found

    async def create_assistant(self, request: Request, body: Any) -> dict[str, Any]:
        """The handler's filter's equalities become the assistant's metadata (its owner)."""
        value = body.model_dump()
        value["metadata"] = dict(body.metadata or {})
        where = await self.assistants(request, "create", value)
        body.metadata = {**equalities(where), **_metadata(value)}
        return await self.service.assistants.create(body)

    async def assistant_filter(self, request: Request, action: str, value: dict[str, Any]
                               ) -> Any:
        """A predicate over assistants from the handler's filter (None: all)."""
        where = await self.assistants(request, action, value)
        if where is None:
            return None
        return lambda assistant: matches(assistant.get("metadata"), where)
