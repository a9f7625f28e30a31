"""The assistants routes (LangGraph Platform's ``/assistants``): every one goes through
``Access`` (the auth handlers' ``assistants`` checks and filters) to ``AssistantsService``.
Added to the app itself, not as an included router, so ``serve_app.api.routes_auth`` sees each
route as it is."""

from __future__ import annotations

from fastapi import FastAPI, Response

from serve_app.api.access import Access, Caller
from serve_app.resources.api_errors import ApiError
from serve_app.resources.schemas import (
    AssistantCreate,
    AssistantFilter,
    AssistantLatest,
    AssistantPatch,
    AssistantSearch,
    AssistantVersions,
)


def add_assistant_routes(router: FastAPI, access: Access) -> None:
    assistants = access.service.assistants

    @router.post("/assistants")
    async def create_assistant(user: Caller, body: AssistantCreate) -> dict:
        return await access.create_assistant(user, body)

    @router.post("/assistants/search")
    async def search_assistants(user: Caller, response: Response,
                                body: AssistantSearch) -> list[dict]:
        """A page; ``X-Pagination-Next`` is the next page's offset if there is one (the
        SDK's ``response_format="object"``), ``X-Pagination-Total`` counts every match."""
        where = await access.assistant_filter(user, "search", body.model_dump())
        found = await assistants.search(body, where)
        total = await assistants.count(body, where)
        response.headers["X-Pagination-Total"] = str(total)
        if body.offset + len(found) < total:
            response.headers["X-Pagination-Next"] = str(body.offset + len(found))
        return found

    @router.post("/assistants/count")
    async def count_assistants(user: Caller, body: AssistantFilter) -> int:
        where = await access.assistant_filter(user, "search", body.model_dump())
        return await assistants.count(body, where)

    @router.get("/assistants/{assistant_id}")
    async def get_assistant(user: Caller, assistant_id: str) -> dict:
        await assistants.get(assistant_id)  # 422 for a graph name, as on the platform
        return await access.assistant(user, assistant_id)

    @router.patch("/assistants/{assistant_id}")
    async def update_assistant(user: Caller, assistant_id: str,
                               body: AssistantPatch) -> dict:
        await access.assistant(user, assistant_id, "update")
        return await assistants.update(assistant_id, body)

    @router.delete("/assistants/{assistant_id}", status_code=204)
    async def delete_assistant(user: Caller, assistant_id: str,
                               delete_threads: bool = False) -> None:
        if delete_threads:
            raise ApiError(422, "delete_threads: not supported; delete the assistant's "
                                "threads with threads.search and threads.delete")
        await access.assistant(user, assistant_id, "delete")
        await assistants.delete(assistant_id)

    @router.post("/assistants/{assistant_id}/versions")
    async def assistant_versions(user: Caller, assistant_id: str,
                                 body: AssistantVersions) -> list[dict]:
        await access.assistant(user, assistant_id)
        return await assistants.versions(assistant_id, body.metadata, body.limit, body.offset)

    @router.post("/assistants/{assistant_id}/latest")
    async def set_latest(user: Caller, assistant_id: str, body: AssistantLatest) -> dict:
        await access.assistant(user, assistant_id, "update")
        return await assistants.set_latest(assistant_id, body.version)

    @router.get("/assistants/{assistant_id}/graph")
    async def get_graph(user: Caller, assistant_id: str, xray: bool | int = False) -> dict:
        found = await access.assistant(user, assistant_id)
        return assistants.graph_drawing(found["graph_id"], xray)

    @router.get("/assistants/{assistant_id}/schemas")
    async def get_schemas(user: Caller, assistant_id: str) -> dict:
        return assistants.schemas((await access.assistant(user, assistant_id))["graph_id"])
