"""Authorization applied to resources: what the routes call before ``AgentService`` acts.

Every thread a request names passes the ``threads`` handler of the route's action
(``serve_app.api.routes_auth``) and, when that handler returns a filter, the thread's metadata
must match it: otherwise the thread answers 404, exactly as one that does not exist (no
existence leak). Searches apply the filter to every record; a handler's changes to
``value["metadata"]`` are what is stored. Runs and their streams belong to their thread, so
reading, joining, streaming, cancelling or deleting a run is checked on its thread.
Creating a run is ``serve_app.resources.run_road``'s (one road for every run).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from serve_app.resources.api_errors import ApiError
from serve_app.resources.approvals import Approvals
from serve_app.resources.auth import Authorizer, User, matches
from serve_app.resources.limits import Limits
from serve_app.resources.run_road import equalities, metadata_of
from serve_app.resources.schemas import (
    AssistantCreate,
    StateUpdate,
    ThreadCount,
    ThreadCreate,
    ThreadPatch,
    ThreadPrune,
    ThreadSearch,
)
from serve_app.resources.service import AgentService


def current_user(request: Request) -> User:
    """The request's user (``Depends``), as the middleware authenticated it."""
    user = getattr(request.state, "user", None)
    if user is None:  # the middleware authenticates every non-public route
        raise ApiError(401, "not authenticated")
    return user


Caller = Annotated[User, Depends(current_user)]  # a route's parameter: who is calling


class Access:
    def __init__(self, service: AgentService, authorizer: Authorizer, limits: Limits,
                 approvals: Approvals):
        self.service = service
        self.auth = authorizer
        self.limits = limits
        self.approvals = approvals

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

    async def thread(self, user: User, thread_id: str, action: str = "read",
                     value: dict[str, Any] | None = None) -> dict[str, Any]:
        thread, _ = await self.visible(user, thread_id, action, value)
        return thread

    # threads
    async def create_thread(self, user: User, body: ThreadCreate) -> dict[str, Any]:
        value = {"thread_id": body.thread_id, "metadata": dict(body.metadata or {}),
                 "if_exists": body.if_exists, "ttl": body.ttl}
        where = await self.auth.authorize(user, "threads", "create", value)
        metadata = {**equalities(where), **metadata_of(value)}
        if body.thread_id:
            existing = await self.service.records.get_thread(body.thread_id)
            if existing is not None:
                if body.if_exists == "raise" or not matches(existing.get("metadata"), where):
                    raise ApiError(409, f"thread {body.thread_id!r} already exists")
                return await self.service.threads.view(existing)
        await self.limits.check_threads(user.identity)
        view = await self.service.threads.create(body.thread_id, metadata, body.ttl,
                                                body.if_exists)
        await self.limits.owns(user.identity, view["thread_id"])
        return view

    async def search_threads(self, user: User, body: ThreadSearch) -> list[dict[str, Any]]:
        value = {"metadata": dict(body.metadata or {}), "status": body.status,
                 "limit": body.limit, "offset": body.offset}
        where = await self.auth.authorize(user, "threads", "search", value)
        if where is None:
            return await self.service.threads.search(body)
        return await self.service.threads.search(
            body, lambda record: matches(record.get("metadata"), where))

    async def count_threads(self, user: User, body: ThreadCount) -> int:
        value = {"metadata": dict(body.metadata or {}), "status": body.status,
                 "values": body.values}
        where = await self.auth.authorize(user, "threads", "search", value)
        return await self.service.threads.count(
            body, None if where is None else lambda r: matches(r.get("metadata"), where))

    async def copy_thread(self, user: User, thread_id: str) -> dict[str, Any]:
        """A copy of a thread the user may read, counted as a thread the user made."""
        await self.visible(user, thread_id, "read")
        await self.limits.check_threads(user.identity)
        view = await self.service.threads.copy(thread_id)
        await self.limits.owns(user.identity, view["thread_id"])
        return view

    async def update_thread(self, user: User, thread_id: str,
                            body: ThreadPatch) -> dict[str, Any]:
        value = {"thread_id": thread_id, "metadata": dict(body.metadata)}
        where = await self.auth.authorize(user, "threads", "update", value)
        thread = await self.service.records.get_thread(thread_id)
        if thread is None or not matches(thread.get("metadata"), where):
            raise ApiError(404, f"thread {thread_id!r} not found")
        metadata = metadata_of(value)
        if not matches({**thread["metadata"], **metadata}, where):
            raise ApiError(403, "this metadata would take the thread out of your reach")
        return await self.service.threads.update(thread_id, metadata, body.ttl)

    async def delete_thread(self, user: User, thread_id: str) -> None:
        await self.thread(user, thread_id, "delete")
        await self.service.threads.delete(thread_id)

    async def prune_threads(self, user: User, body: ThreadPrune) -> dict[str, int]:
        """Only the threads the user may delete; others are skipped as if absent."""
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

    async def update_state(self, user: User, thread_id: str, body: StateUpdate) -> dict:
        thread, _ = await self.visible(user, thread_id, "update",
                                       {"values": body.values, "as_node": body.as_node})
        self.limits.check_message_sizes(body.values)
        await self.approvals.guard_state_change(user, self.auth.open, thread,
                                                "a state update")
        return await self.service.threads.update_state(thread_id, body.values, body.as_node,
                                               body.target)

    async def approval_log(self, user: User, thread_id: str, after: str | None,
                           limit: int) -> list[dict[str, Any]]:
        await self.thread(user, thread_id, "read")
        return await self.approvals.log.read(thread_id, after, limit)

    # assistants
    async def assistants(self, user: User, action: str,
                         value: dict[str, Any]) -> dict[str, Any] | None:
        return await self.auth.authorize(user, "assistants", action, value)

    async def assistant(self, user: User, assistant_id: str,
                        action: str = "read") -> dict[str, Any]:
        """A readable assistant (404 if the handler's filter hides it)."""
        where = await self.assistants(user, action, {"assistant_id": assistant_id})
        found = await self.service.assistants.find(assistant_id)
        if not matches(found["metadata"], where):
            raise ApiError(404, f"assistant {assistant_id!r} not found")
        return found

    async def create_assistant(self, user: User, body: AssistantCreate) -> dict[str, Any]:
        """The handler's filter's equalities become the assistant's metadata (its owner)."""
        value = body.model_dump()
        value["metadata"] = dict(body.metadata or {})
        where = await self.assistants(user, "create", value)
        metadata = {**equalities(where), **metadata_of(value)}
        return await self.service.assistants.create(body.model_copy(update={"metadata": metadata}))

    async def assistant_filter(self, user: User, action: str, value: dict[str, Any]
                               ) -> Any:
        """A predicate over assistants from the handler's filter (None: all)."""
        where = await self.assistants(user, action, value)
        if where is None:
            return None
        return lambda assistant: matches(assistant.get("metadata"), where)
