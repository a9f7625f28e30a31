"""The threads routes (LangGraph Platform's ``/threads``: a thread, its state, its history,
its approval log): each through ``Access`` (the ``threads`` auth handlers' checks and
filters) to ``ThreadsService``. On the app itself, as ``serve_app.api.routes_store`` explains.
No postponed annotations: ``Thread`` is made inside ``add_thread_routes``, and FastAPI must
read the handlers' types as objects."""

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response

from serve_app.api.access import Access, Caller
from serve_app.resources.api_errors import ApiError
from serve_app.resources.schemas import (
    HistoryQuery,
    StateAt,
    StateUpdate,
    ThreadCount,
    ThreadCreate,
    ThreadPatch,
    ThreadPrune,
    ThreadSearch,
)


def check_include(include: str | None = None) -> None:
    """``include`` of a thread read: a thread's ttl is always included, nothing else is."""
    extra = [name for name in (include or "").split(",") if name and name != "ttl"]
    if extra:
        raise ApiError(422, f"include: {extra} not supported; only 'ttl'")


def add_thread_routes(api: FastAPI, access: Access) -> None:
    threads = access.service.threads

    async def readable(user: Caller, thread_id: str) -> dict[str, Any]:
        """The thread the path names, if the user may read it (else 404)."""
        return await access.thread(user, thread_id)

    Thread = Annotated[dict[str, Any], Depends(readable)]

    @api.post("/threads")
    async def create_thread(user: Caller, body: ThreadCreate) -> dict:
        return await access.create_thread(user, body)

    @api.post("/threads/prune")
    async def prune_threads(user: Caller, body: ThreadPrune) -> dict:
        return await access.prune_threads(user, body)

    @api.post("/threads/search")
    async def search_threads(user: Caller, body: ThreadSearch) -> list[dict]:
        return await access.search_threads(user, body)

    @api.post("/threads/count")
    async def count_threads(user: Caller, body: ThreadCount) -> int:
        return await access.count_threads(user, body)

    @api.post("/threads/{thread_id}/copy")
    async def copy_thread(user: Caller, thread_id: str) -> dict:
        return await access.copy_thread(user, thread_id)

    @api.get("/threads/{thread_id}")
    async def get_thread(include: Annotated[None, Depends(check_include)],
                         thread: Thread) -> dict:
        return await threads.view(thread)

    @api.patch("/threads/{thread_id}", response_model=None)
    async def patch_thread(request: Request, user: Caller, thread_id: str,
                           body: ThreadPatch) -> dict | Response:
        updated = await access.update_thread(user, thread_id, body)
        if "return=minimal" in request.headers.get("prefer", ""):  # SDK's return_minimal
            return Response(status_code=204)
        return updated

    @api.delete("/threads/{thread_id}", status_code=204)
    async def delete_thread(user: Caller, thread_id: str) -> None:
        await access.delete_thread(user, thread_id)

    @api.get("/threads/{thread_id}/state")
    async def get_state(thread: Thread) -> dict:
        return await threads.get_state(thread["thread_id"])

    @api.get("/threads/{thread_id}/state/{checkpoint_id}")
    async def get_state_at(thread: Thread, checkpoint_id: str) -> dict:
        return await threads.get_state(thread["thread_id"], checkpoint_id)

    @api.post("/threads/{thread_id}/state/checkpoint")
    async def post_state_at(thread: Thread, body: StateAt) -> dict:
        return await threads.get_state(thread["thread_id"], body.checkpoint.checkpoint_id)

    @api.post("/threads/{thread_id}/state")
    async def update_state(user: Caller, thread_id: str, body: StateUpdate) -> dict:
        return await access.update_state(user, thread_id, body)

    @api.post("/threads/{thread_id}/history")
    async def history(thread: Thread, body: HistoryQuery) -> list[dict]:
        return await threads.history(thread["thread_id"], body.limit, body.before,
                                     body.metadata)

    @api.get("/threads/{thread_id}/approvals")
    async def approval_log(user: Caller, thread_id: str,
                           after: Annotated[str | None, Query(max_length=64)] = None,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
        """The thread's approval log, oldest first: who decided what, when, on which call
        (original and edited args, reason, interrupt); ``after`` an entry id to page."""
        return await access.approval_log(user, thread_id, after, limit)
