"""The Store API's logic: LangGraph Platform's ``/store`` operations on the long-term memory
store the graphs use (``agents.memory``), through the ``store`` auth handlers.

Each operation passes the ``("store", action)`` handler (``put``, ``get``, ``delete``,
``search``, ``list_namespaces``) with a mutable value, as on LangGraph Platform: a handler
scopes a user by rewriting ``value["namespace"]``, and a filter it returns narrows a
search. With auth but no ``store`` handler (the built-in API keys, or an auth file without
one), a user's namespaces are those under its identity (``own_namespace``), the namespaces
the agents keep its memories in (``agents.memory``). In the open mode namespaces are shared
by every caller. With a semantic index (``store.index``), a search's ``query`` ranks by
meaning and a put's ``index`` names the fields to embed; without one, both are refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from langgraph.store.base import BaseStore, InvalidNamespaceError, Item
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redisvl.exceptions import RedisSearchError

from agents.memory import create_store
from agents.settings import Settings
from serve_app.resources.api_errors import ApiError
from serve_app.resources.auth import Authorizer, User


def check_namespace(namespace: Any, what: str = "namespace") -> tuple[str, ...]:
    """A namespace as a tuple of labels: non-empty strings without periods (the SDK joins
    them with periods in a query string); an item's has at least one."""
    if not isinstance(namespace, list | tuple):
        raise ApiError(422, f"{what} must be a list of labels")
    if what == "namespace" and not namespace:
        raise ApiError(422, "namespace must have at least one label")
    for label in namespace:
        if not isinstance(label, str) or not label or "." in label:
            raise ApiError(422, f"{what} label {label!r} must be a non-empty string "
                                "without periods")
    return tuple(namespace)


def no_semantic_index(field: str) -> ApiError:
    return ApiError(422, f"{field}: the store has no semantic index (no embeddings are "
                         "configured), so it cannot embed or rank by meaning")


def item_view(item: Item) -> dict[str, Any]:
    """An item as the API returns it (``score`` only from a search that ranks)."""
    return item.dict()


def own_namespace(user: User, value: dict[str, Any]) -> None:
    """LangGraph's recipe for a user's store: ``["memories"]`` is the user's
    ``[<identity>, "memories"]``, and nobody reaches another identity's namespaces."""
    namespace = tuple(value.get("namespace") or ())
    if namespace[:1] != (user.identity,):
        value["namespace"] = (user.identity, *namespace)


class StoreService:
    """One replica's access to the store; the store object is built on first use, inside
    the serving event loop (its batching task lives there)."""

    def __init__(self, redis: Redis, authorizer: Authorizer, settings: Settings):
        self.redis = redis
        self.auth = authorizer
        self.settings = settings  # its store section, and the model's URL
        self._store: BaseStore | None = None
        self._lock = asyncio.Lock()

    @staticmethod
    @contextmanager
    def _refusals() -> Iterator[None]:
        """What the store refuses is the client's to fix: 422, not a 5xx."""
        try:
            yield
        except InvalidNamespaceError as exc:
            raise ApiError(422, f"namespace: {exc}") from None
        except (RedisSearchError, ResponseError) as exc:
            if "syntax error" not in str(exc).lower():
                raise
            raise ApiError(422, "the namespace or key has characters the store's search "
                                f"cannot take: {str(exc)[:200]}") from None

    async def store(self) -> BaseStore:
        async with self._lock:
            if self._store is None:
                self._store = await create_store(self.redis, self.settings.store,
                                                 self.settings.model)
        return self._store

    async def _authorized(self, user: User, action: str, value: dict[str, Any],
                          what: str = "namespace") -> dict[str, Any] | None:
        """Run the handler (it may rewrite the namespace) and check what it left; with
        auth but no ``store`` handler, the user's namespaces are those under its identity."""
        where = await self.auth.authorize(user, "store", action, value)
        if not self.auth.open and not self.auth.has_own_handler("store", action):
            where = None  # a filter of a handler for every resource is not about items
            own_namespace(user, value)
        if value.get("namespace") is not None:
            value["namespace"] = check_namespace(value["namespace"], what)
        return where

    async def put(self, user: User, namespace: Sequence[str], key: str,
                  value: dict[str, Any], index: Any, ttl: float | None) -> None:
        if isinstance(index, list) and self.settings.store.index is None:
            raise no_semantic_index("index")
        args = {"namespace": check_namespace(namespace), "key": key, "value": value,
                "index": index, "ttl": ttl}
        await self._authorized(user, "put", args)
        with self._refusals():
            await (await self.store()).aput(args["namespace"], args["key"], args["value"],
                                            index=args["index"], ttl=args["ttl"])

    async def get(self, user: User, namespace: str, key: str,
                  refresh_ttl: bool | None) -> dict[str, Any] | None:
        args = {"namespace": check_namespace(namespace.split(".")), "key": key,
                "refresh_ttl": refresh_ttl}
        await self._authorized(user, "get", args)
        with self._refusals():
            item = await (await self.store()).aget(args["namespace"], args["key"],
                                                   refresh_ttl=args["refresh_ttl"])
        return None if item is None else item_view(item)

    async def delete(self, user: User, namespace: Sequence[str], key: str) -> None:
        args = {"namespace": check_namespace(namespace), "key": key}
        await self._authorized(user, "delete", args)
        with self._refusals():
            await (await self.store()).adelete(args["namespace"], args["key"])

    async def search(self, user: User, body: Any) -> dict[str, Any]:
        if body.query and self.settings.store.index is None:
            raise no_semantic_index("query")
        args = {"namespace": check_namespace(body.namespace_prefix, "namespace_prefix"),
                "filter": body.filter, "limit": body.limit, "offset": body.offset,
                "query": body.query, "refresh_ttl": body.refresh_ttl}
        where = await self._authorized(user, "search", args, "namespace_prefix")
        if where:
            args["filter"] = {**(args["filter"] or {}), **where}
        with self._refusals():
            items = await (await self.store()).asearch(
                args["namespace"], filter=args["filter"], limit=args["limit"],
                offset=args["offset"], query=args["query"], refresh_ttl=args["refresh_ttl"])
        return {"items": [item_view(item) for item in items]}

    async def namespaces(self, user: User, body: Any) -> dict[str, Any]:
        args = {"namespace": None if body.prefix is None else
                check_namespace(body.prefix, "prefix"),
                "suffix": None if body.suffix is None else check_namespace(body.suffix, "suffix"),
                "max_depth": body.max_depth, "limit": body.limit, "offset": body.offset}
        await self._authorized(user, "list_namespaces", args, "prefix")
        if args["suffix"] is not None:
            args["suffix"] = check_namespace(args["suffix"], "suffix")
        with self._refusals():
            found = await (await self.store()).alist_namespaces(
                prefix=args["namespace"] or None, suffix=args["suffix"] or None,
                max_depth=args["max_depth"], limit=args["limit"], offset=args["offset"])
        return {"namespaces": [list(ns) for ns in found]}
