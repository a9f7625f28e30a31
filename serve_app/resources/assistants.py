"""Assistants: a graph with its own config, context and metadata, versioned, in Redis.

Each graph has a built-in default assistant (LangGraph Platform's id, ``assistant_id``),
fixed at version 1: not stored, not deletable. Created assistants are stored under one hash
tag (``serve_app.keys``): the current version as JSON, every version in a hash, an index by
creation time. An update writes a new version and makes it current; ``set_latest`` makes an
older one current again. A run uses its assistant's config and context under its own.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import ValidationError

from serve_app.keys import ALL_ASSISTANTS, assistant_key, assistant_versions_key
from serve_app.resources.api_errors import ApiError
from serve_app.resources.service_context import ServiceContext
from serve_app.runs.records import now_iso

ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
DEFAULT_GRAPH = "supervisor"
BUILT_IN_STAMP = "2026-01-01T00:00:00+00:00"
VERSIONED = ("graph_id", "config", "context", "metadata", "name", "description",
             "interrupt_before", "interrupt_after")


def assistant_id(graph_id: str) -> str:
    """A graph's default assistant id, as LangGraph Platform derives it."""
    return str(uuid.uuid5(ASSISTANT_NAMESPACE, graph_id))


def built_in(graph_id: str) -> dict[str, Any]:
    return {"assistant_id": assistant_id(graph_id), "graph_id": graph_id, "name": graph_id,
            "config": {}, "context": {}, "metadata": {"created_by": "system"}, "version": 1,
            "created_at": BUILT_IN_STAMP, "updated_at": BUILT_IN_STAMP, "description": None}


def matches_filter(assistant: dict[str, Any], graph_id: str | None, name: str | None,
                   metadata: dict[str, Any] | None) -> bool:
    """Search's filter: the graph, a name containing ``name`` (any case), and metadata
    containing ``metadata``."""
    meta = assistant.get("metadata") or {}
    return graph_id in (None, assistant["graph_id"]) and \
        (name is None or name.lower() in (assistant.get("name") or "").lower()) and \
        all(meta.get(k) == v for k, v in (metadata or {}).items())


def merge_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A run's config over its assistant's: keys of ``over`` win; ``configurable`` and
    ``metadata`` merge key by key, ``tags`` add up."""
    merged = {**base, **over}
    for key in ("configurable", "metadata"):
        if key in base or key in over:
            merged[key] = {**(base.get(key) or {}), **(over.get(key) or {})}
    if base.get("tags") or over.get("tags"):
        merged["tags"] = list(dict.fromkeys([*(base.get("tags") or []),
                                             *(over.get("tags") or [])]))
    return merged


class AssistantsService:
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    # reading
    def built_ins(self) -> list[dict[str, Any]]:
        return [built_in(g) for g in self.ctx.graphs]

    def _built_in(self, assistant: str) -> dict[str, Any] | None:
        """A graph name or its default assistant's id."""
        for graph in self.ctx.graphs:
            if assistant in (graph, assistant_id(graph)):
                return built_in(graph)
        return None

    async def stored(self, assistant: str) -> dict[str, Any] | None:
        raw = await self.ctx.redis.get(assistant_key(assistant))
        return json.loads(raw) if raw else None

    async def find(self, assistant: str) -> dict[str, Any]:
        """An assistant by id, or a graph name for its default one (as runs accept)."""
        found = self._built_in(assistant) or await self.stored(assistant)
        if found is None:
            raise ApiError(404, f"assistant {assistant!r} not found")
        return found

    async def get(self, assistant: str) -> dict[str, Any]:
        """``GET /assistants/{id}``: ids only (a graph name is 422, as on the platform)."""
        try:
            uuid.UUID(assistant)
        except ValueError:
            raise ApiError(422, f"assistant id must be a UUID, got {assistant!r}") from None
        return await self.find(assistant)

    async def graph_id(self, assistant: str) -> str:
        return (await self.find(assistant))["graph_id"]

    async def all(self) -> list[dict[str, Any]]:
        """Built-ins first (graph order), then stored ones by creation time."""
        ids = [i.decode() for i in await self.ctx.redis.zrange(ALL_ASSISTANTS, 0, -1)]
        raws = await self.ctx.redis.mget([assistant_key(i) for i in ids]) if ids else []
        return self.built_ins() + [json.loads(r) for r in raws if r]

    async def search(self, body: Any, where: Any = None) -> list[dict[str, Any]]:
        """``where``: a predicate an auth handler's filter adds."""
        found = [a for a in await self.all()
                 if matches_filter(a, body.graph_id, body.name, body.metadata)
                 and (where is None or where(a))]
        if body.sort_by:
            found.sort(key=lambda a: str(a.get(body.sort_by) or ""),
                       reverse=(body.sort_order or "desc") == "desc")
        elif body.sort_order == "desc":
            found.reverse()
        page = found[body.offset:body.offset + body.limit]
        if body.select:
            page = [{k: a.get(k) for k in body.select} for a in page]
        return page

    async def count(self, body: Any, where: Any = None) -> int:
        return sum(1 for a in await self.all()
                   if matches_filter(a, body.graph_id, body.name, body.metadata)
                   and (where is None or where(a)))

    async def versions(self, assistant: str, metadata: dict[str, Any] | None, limit: int,
                       offset: int) -> list[dict[str, Any]]:
        """Newest first."""
        found = await self.find(assistant)
        if self._built_in(assistant):
            versions = [found]
        else:
            raw = await self.ctx.redis.hvals(assistant_versions_key(found["assistant_id"]))
            versions = sorted((json.loads(v) for v in raw), key=lambda v: -v["version"])
        wanted = (metadata or {}).items()
        versions = [v for v in versions
                    if all((v.get("metadata") or {}).get(k) == x for k, x in wanted)]
        return versions[offset:offset + limit]

    def graph_drawing(self, graph_id: str, xray: bool | int) -> dict[str, Any]:
        """Nodes and edges of a graph, as LangGraph draws it."""
        return self.ctx.graphs[graph_id].get_graph(xray=xray).to_json()

    def schemas(self, graph_id: str) -> dict[str, Any]:
        graph = self.ctx.graphs[graph_id]
        state = graph.get_output_jsonschema()  # no output schema of its own: the state's
        return {"graph_id": graph_id, "input_schema": graph.get_input_jsonschema(),
                "output_schema": state, "state_schema": state,
                "config_schema": None, "context_schema": graph.get_context_jsonschema()}

    # writing
    def check_fields(self, fields: dict[str, Any]) -> None:
        """The graph exists and the context fits its ``context_schema`` (422 otherwise)."""
        graph_id = fields["graph_id"]
        if graph_id not in self.ctx.graphs:
            raise ApiError(422, f"graph_id {graph_id!r} is no graph of this deployment; "
                                f"graphs: {sorted(self.ctx.graphs)}")
        graph = self.ctx.graphs[graph_id]
        check_context(graph, fields.get("context"))
        for name in ("interrupt_before", "interrupt_after"):
            check_breakpoints(name, fields.get(name), graph)

    async def create(self, body: Any) -> dict[str, Any]:
        new_id = body.assistant_id or str(uuid.uuid4())
        try:
            uuid.UUID(new_id)
        except ValueError:
            raise ApiError(422, f"assistant_id must be a UUID, got {new_id!r}") from None
        existing = self._built_in(new_id) or await self.stored(new_id)
        if existing is not None:
            if body.if_exists == "do_nothing":
                return existing
            raise ApiError(409, f"assistant {new_id!r} already exists")
        stamp = now_iso()
        fields = body.model_dump(include=set(VERSIONED))
        self.check_fields(fields)
        assistant = {"assistant_id": new_id, **fields, "name": body.name or body.graph_id,
                     "config": body.config or {}, "context": body.context or {},
                     "metadata": body.metadata or {}, "version": 1,
                     "created_at": stamp, "updated_at": stamp}
        redis = self.ctx.redis
        created = await redis.set(assistant_key(new_id), json.dumps(assistant), nx=True)
        if not created:  # a concurrent create of the same id won
            if body.if_exists == "do_nothing":
                return await self.find(new_id)
            raise ApiError(409, f"assistant {new_id!r} already exists")
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(assistant_versions_key(new_id), "1", json.dumps(assistant))
            pipe.zadd(ALL_ASSISTANTS, {new_id: time.time()})
            await pipe.execute()
        return assistant

    async def _stored_or_refuse(self, assistant: str, doing: str) -> dict[str, Any]:
        if self._built_in(assistant):
            raise ApiError(409, f"assistant {assistant!r} is a graph's built-in default "
                                f"assistant; it cannot be {doing} (create your own)")
        found = await self.stored(assistant)
        if found is None:
            raise ApiError(404, f"assistant {assistant!r} not found")
        return found

    async def update(self, assistant: str, body: Any) -> dict[str, Any]:
        """A new version from the current one with the given fields, made current."""
        current = await self._stored_or_refuse(assistant, "updated")
        changes = body.model_dump(include=set(VERSIONED), exclude_unset=True)
        fields = {**{k: current.get(k) for k in VERSIONED}, **changes}
        self.check_fields(fields)
        key = assistant_versions_key(assistant)
        version = len(await self.ctx.redis.hkeys(key)) + 1
        updated = {**current, **fields, "version": version, "updated_at": now_iso()}
        for name in ("config", "context", "metadata"):
            updated[name] = updated[name] or {}
        async with self.ctx.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, str(version), json.dumps(updated))
            pipe.set(assistant_key(assistant), json.dumps(updated))
            await pipe.execute()
        return updated

    async def set_latest(self, assistant: str, version: int) -> dict[str, Any]:
        await self._stored_or_refuse(assistant, "changed")
        raw = await self.ctx.redis.hget(assistant_versions_key(assistant), str(version))
        if raw is None:
            raise ApiError(404, f"assistant {assistant!r} has no version {version}")
        latest = {**json.loads(raw), "updated_at": now_iso()}
        await self.ctx.redis.set(assistant_key(assistant), json.dumps(latest))
        return latest

    async def delete(self, assistant: str) -> None:
        await self._stored_or_refuse(assistant, "deleted")
        async with self.ctx.redis.pipeline(transaction=True) as pipe:
            pipe.delete(assistant_key(assistant), assistant_versions_key(assistant))
            pipe.zrem(ALL_ASSISTANTS, assistant)
            await pipe.execute()


def check_breakpoints(field: str, nodes: Any, graph: Any) -> None:
    """``interrupt_before`` / ``interrupt_after``: ``"*"`` or nodes of the graph."""
    if nodes is None or nodes == "*":
        return
    known = set(graph.nodes) - {"__start__"}
    unknown = [name for name in nodes if name not in known]
    if unknown:
        raise ApiError(422, f"{field} names no node of this graph: {unknown}; "
                            f"nodes: {sorted(known)}")


def check_context(graph: Any, context: dict[str, Any] | None) -> None:
    """A context the graph's ``context_schema`` cannot take is refused (422) before it is
    stored or run, naming the field."""
    schema = graph.context_schema
    if not context or schema is None or not hasattr(schema, "model_validate"):
        return
    try:
        schema.model_validate(context)
    except ValidationError as exc:
        errors = "; ".join(f"context.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                           for e in exc.errors())
        raise ApiError(422, errors) from exc
