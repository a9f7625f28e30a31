"""The Store API's routes (LangGraph Platform's ``/store``; ``client.store`` of the SDK):
thin, every route delegates to ``StoreService``. Unknown body fields are refused (422)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from serve_app.api.access import Caller
from serve_app.resources.store import StoreService

Namespace = list[str]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorePut(StrictBody):
    namespace: Namespace
    key: str = Field(min_length=1, max_length=1024)
    value: dict[str, Any]
    index: Literal[False] | list[str] | None = None
    ttl: float | None = Field(None, ge=1 / 60, le=52_560_000,
                              description="minutes (a second to a century)")


class StoreDelete(StrictBody):
    namespace: Namespace
    key: str = Field(min_length=1, max_length=1024)


class StoreSearch(StrictBody):
    namespace_prefix: Namespace = Field(default_factory=list)
    filter: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    query: str | None = None
    refresh_ttl: bool | None = None


class StoreNamespaces(StrictBody):
    prefix: Namespace | None = None
    suffix: Namespace | None = None
    max_depth: int | None = Field(None, ge=1)
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0)


def add_store_routes(router: APIRouter | FastAPI, store: StoreService) -> None:
    """On the app itself: an included router (FastAPI 0.165 includes lazily) would hide
    its routes from the auth map (``serve_app.api.routes_auth``)."""

    @router.put("/store/items", status_code=204)
    async def put_item(user: Caller, body: StorePut) -> Response:
        await store.put(user, body.namespace, body.key, body.value,
                        body.index, body.ttl)
        return Response(status_code=204)

    @router.get("/store/items")
    async def get_item(user: Caller, namespace: Annotated[str, Query(max_length=4096)],
                       key: Annotated[str, Query(min_length=1, max_length=1024)],
                       refresh_ttl: bool | None = None) -> dict | None:
        """The item, or ``null`` when there is none (as LangGraph Platform answers)."""
        return await store.get(user, namespace, key, refresh_ttl)

    @router.delete("/store/items", status_code=204)
    async def delete_item(user: Caller, body: StoreDelete) -> Response:
        await store.delete(user, body.namespace, body.key)
        return Response(status_code=204)

    @router.post("/store/items/search")
    async def search_items(user: Caller, body: StoreSearch) -> dict:
        return await store.search(user, body)

    @router.post("/store/namespaces")
    async def list_namespaces(user: Caller, body: StoreNamespaces) -> dict:
        return await store.namespaces(user, body)
