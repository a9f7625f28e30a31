"""Threads and their state: create, search, update, delete, prune; state, history, updates."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.messages import convert_to_messages
from langgraph.errors import InvalidUpdateError
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot

from serve_app.resources.api_errors import ApiError, first_line
from serve_app.resources.assistants import DEFAULT_GRAPH
from serve_app.resources.run_streams import RunStreams
from serve_app.resources.service_context import ServiceContext
from serve_app.runs.jsonable import to_jsonable

SEARCH_SCAN = 10_000  # threads a sorted or value-filtered search reads at most


def with_ids(where: Any, ids: list[str] | None) -> Any:
    """``where`` narrowed to the thread ids ``ids`` (None: any)."""
    if ids is None:
        return where
    wanted = set(ids)
    return lambda record: record["thread_id"] in wanted and (where is None or where(record))


def check_messages(values: Any, field: str) -> None:
    """Refuse (422) messages the state's reducer cannot read, before they reach a thread:
    stored there, they would fail every later read of its state."""
    if not isinstance(values, dict) or "messages" not in values:
        return
    messages = values["messages"]
    try:
        convert_to_messages(messages if isinstance(messages, list) else [messages])
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ApiError(422, f"{field}.messages: {first_line(exc)}") from exc


def state_snapshot(snapshot: StateSnapshot) -> dict[str, Any]:
    """LangGraph Platform's ThreadState; an empty thread has no checkpoint."""
    if not snapshot.values and snapshot.created_at is None:
        return {"values": {}, "next": [], "tasks": [], "metadata": {}, "created_at": None,
                "checkpoint": None, "parent_checkpoint": None, "checkpoint_id": None,
                "parent_checkpoint_id": None, "interrupts": []}

    def checkpoint(config: dict | None) -> dict | None:
        if not config:
            return None
        c = config["configurable"]
        return {"thread_id": c.get("thread_id"), "checkpoint_ns": c.get("checkpoint_ns", ""),
                "checkpoint_id": c.get("checkpoint_id")}

    current, parent = checkpoint(snapshot.config), checkpoint(snapshot.parent_config)
    return {
        "values": to_jsonable(snapshot.values),
        "next": list(snapshot.next),
        "tasks": [{"id": t.id, "name": t.name, "path": to_jsonable(list(t.path)),
                   "error": t.error, "state": None, "checkpoint": None,
                   "interrupts": to_jsonable(list(t.interrupts)),
                   "result": to_jsonable(t.result)} for t in snapshot.tasks],
        "metadata": to_jsonable(snapshot.metadata or {}),
        "created_at": snapshot.created_at,
        "checkpoint": current,
        "parent_checkpoint": parent,
        "checkpoint_id": current and current["checkpoint_id"],  # the older flat fields
        "parent_checkpoint_id": parent and parent["checkpoint_id"],
        "interrupts": to_jsonable(list(snapshot.interrupts)),
    }


def thread_ttl(ttl: Any) -> dict[str, Any] | None:
    """LangGraph Platform's thread ``ttl``: minutes, or ``{"strategy": "delete", "ttl":
    minutes}``; the idle time after which the thread and everything of it is deleted."""
    if ttl is None:
        return None
    if isinstance(ttl, int | float) and not isinstance(ttl, bool):
        ttl = {"strategy": "delete", "ttl": ttl}
    if not isinstance(ttl, dict) or not isinstance(ttl.get("ttl"), int | float) or \
            isinstance(ttl.get("ttl"), bool) or ttl["ttl"] <= 0:
        raise ApiError(422, f"ttl must be minutes > 0 or {{'strategy': 'delete', 'ttl': "
                            f"minutes}}, got {ttl!r}")
    if ttl.get("strategy", "delete") != "delete":
        raise ApiError(422, f"ttl strategy {ttl.get('strategy')!r} is not supported; "
                            "supported: 'delete'")
    return {"strategy": "delete", "ttl": ttl["ttl"]}


class ThreadsService:
    def __init__(self, ctx: ServiceContext, streams: RunStreams):
        self.ctx = ctx
        self.streams = streams

    async def require(self, thread_id: str) -> dict[str, Any]:
        thread = await self.ctx.records.get_thread(thread_id)
        if thread is None:
            raise ApiError(404, f"thread {thread_id!r} not found")
        return thread

    @staticmethod
    def graph_id(thread: dict[str, Any]) -> str:
        return thread.get("metadata", {}).get("graph_id", DEFAULT_GRAPH)

    def graph(self, thread: dict[str, Any]) -> CompiledStateGraph:
        """The graph that reads and writes the thread's state; 409 if it is not served here
        (a project's graph removed since the thread ran, say)."""
        graph_id = self.graph_id(thread)
        if graph_id not in self.ctx.graphs:
            raise ApiError(409, f"thread {thread['thread_id']!r} belongs to graph "
                                f"{graph_id!r}, which this cluster does not serve; "
                                f"graphs: {sorted(self.ctx.graphs)}")
        return self.ctx.graphs[graph_id]

    async def snapshot(self, thread: dict[str, Any],
                       checkpoint_id: str | None = None) -> StateSnapshot:
        """The thread's state, latest or at ``checkpoint_id`` (404 if it has no such one)."""
        configurable = {"thread_id": thread["thread_id"]}
        if checkpoint_id:
            configurable["checkpoint_id"] = checkpoint_id
        snapshot = await self.graph(thread).aget_state({"configurable": configurable})
        if checkpoint_id and snapshot.created_at is None:
            kept = self.ctx.retention.settings.keep_latest
            raise ApiError(404, f"checkpoint {checkpoint_id!r} not found in thread "
                                f"{thread['thread_id']!r} (never made, or pruned: by the "
                                "retention policy, " + (f"a thread keeps its latest {kept} "
                                "checkpoints)" if kept else "or by threads.prune)"))
        return snapshot

    async def view(self, thread: dict[str, Any], fresh: bool = False) -> dict[str, Any]:
        """The thread with its values and interrupts; ``fresh``: made just now under a new
        id, so it has no state to read."""
        values: Any = {}
        interrupts: dict[str, list] = {}
        if not fresh and self.graph_id(thread) not in self.ctx.graphs:  # its saved values
            saved = await self.ctx.executor.checkpointer.aget_tuple(
                {"configurable": {"thread_id": thread["thread_id"]}})
            values = to_jsonable(saved.checkpoint["channel_values"]) if saved else {}
        elif not fresh:
            snapshot = await self.snapshot(thread)
            values = to_jsonable(snapshot.values)
            for task in snapshot.tasks:
                if task.interrupts:
                    interrupts[task.id] = to_jsonable(list(task.interrupts))
        return {**thread, "values": values, "interrupts": interrupts,
                "error": thread.get("error")}

    async def search(self, body: Any, where: Any = None) -> list[dict[str, Any]]:
        """``where``: a predicate on thread records (an auth handler's filter) on top.
        Newest first by default; ``values``, ``sort_by`` or an ascending order read every
        match (up to ``SEARCH_SCAN``) before the page is cut."""
        where = with_ids(where, body.ids)
        records = self.ctx.records
        if body.values is None and body.sort_by is None and body.sort_order != "asc":
            found = await records.search_threads(body.limit, body.offset, body.metadata,
                                                 body.status, where)
            views = await asyncio.gather(*(self.view(t) for t in found))
        else:
            views = await self._matching(body, where)
            key = body.sort_by or "created_at"
            views.sort(key=lambda v: str(v.get(key) or ""),
                       reverse=(body.sort_order or "desc") == "desc")
            views = views[body.offset:body.offset + body.limit]
        if body.select:
            return [{k: v.get(k) for k in body.select} for v in views]
        return list(views)

    async def count(self, body: Any, where: Any = None) -> int:
        return len(await self._matching(body, where))

    async def _matching(self, body: Any, where: Any) -> list[dict[str, Any]]:
        found = await self.ctx.records.search_threads(SEARCH_SCAN, 0, body.metadata,
                                                      body.status, where)
        views = await asyncio.gather(*(self.view(t) for t in found))
        wanted = (body.values or {}).items()
        return [v for v in views if all(v["values"].get(k) == x for k, x in wanted)]

    async def copy(self, thread_id: str) -> dict[str, Any]:
        """A new thread with the same metadata and every checkpoint of this one (its
        specialists' sub-threads are not copied: the copy's next turn starts new ones)."""
        thread = await self.require(thread_id)
        copied, _ = await self.ctx.records.create_thread(None, thread["metadata"])
        new_id = copied["thread_id"]
        saver = self.ctx.executor.checkpointer
        found = [t async for t in saver.alist({"configurable": {"thread_id": thread_id}})]
        for item in reversed(found):  # oldest first, each after its parent
            source = item.config["configurable"]
            parent = (item.parent_config or {}).get("configurable", {})
            config = {"configurable": {"thread_id": new_id,
                                       "checkpoint_ns": source.get("checkpoint_ns", ""),
                                       "checkpoint_id": parent.get("checkpoint_id")}}
            stored = await saver.aput(config, item.checkpoint, item.metadata,
                                      item.checkpoint["channel_versions"])
            writes: dict[str, list] = {}
            for task_id, channel, value in item.pending_writes or ():
                writes.setdefault(task_id, []).append((channel, value))
            for task_id, task_writes in writes.items():
                await saver.aput_writes(stored, task_writes, task_id)
        await self.ctx.retention.touch(new_id, copied)
        return await self.view(copied)

    async def create(self, thread_id: str | None, metadata: dict[str, Any] | None,
                     ttl: Any = None, if_exists: str = "raise") -> dict[str, Any]:
        thread, created = await self.ctx.records.create_thread(thread_id, metadata,
                                                               ttl=thread_ttl(ttl))
        if not created and if_exists == "raise":
            raise ApiError(409, f"thread {thread_id!r} already exists")
        fresh = created and thread_id is None  # an id made here: nothing of it exists yet
        # a TTL starts now; a named thread may clear the TTL an earlier one left
        if created and not (fresh and self.ctx.retention.ttl_minutes(thread) is None):
            await self.ctx.retention.touch(thread["thread_id"], thread)
        return await self.view(thread, fresh)

    async def update(self, thread_id: str, metadata: dict[str, Any],
                     ttl: Any = None) -> dict[str, Any]:
        """Merge ``metadata`` into the thread's; a ``ttl`` replaces its TTL."""
        thread = await self.require(thread_id)
        fields: dict[str, Any] = {"metadata": {**thread["metadata"], **metadata}}
        if ttl is not None:
            fields["ttl"] = thread_ttl(ttl)
        thread = await self.ctx.records.update_thread(thread_id, **fields)
        await self.ctx.retention.touch(thread_id, thread)
        return await self.view(thread)

    async def delete(self, thread_id: str) -> None:
        """Every key of the thread goes. A busy thread's runs are cancelled first; if they
        have not ended within ``retention.delete_wait_s``, 409 (nothing is deleted)."""
        await self.require(thread_id)
        inflight = await self.ctx.inflight_runs(thread_id)
        if inflight:
            for run in inflight:
                await self.ctx.executor.cancel(run, "interrupt")
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(self.streams.wait_for_end(thread_id, r["run_id"])
                                     for r in inflight)),
                    self.ctx.retention.settings.delete_wait_s)
            except TimeoutError:
                raise ApiError(409, f"thread {thread_id!r} is busy: its runs were cancelled "
                                    "but have not ended yet; retry the delete") from None
        await self.ctx.retention.purge(thread_id, self.ctx.executor.pool)

    async def prune(self, thread_ids: list[str], strategy: str) -> dict[str, int]:
        """LangGraph Platform's prune: ``delete`` deletes the threads; ``keep_latest`` keeps
        each thread and its latest state only (older checkpoints, finished specialists'
        sub-threads). Threads that do not exist are skipped."""
        pruned = 0
        for thread_id in dict.fromkeys(thread_ids):
            thread = await self.ctx.records.get_thread(thread_id)
            if thread is None:
                continue
            if strategy == "delete":
                await self.delete(thread_id)
            else:
                retention = self.ctx.retention
                await retention.prune_checkpoints(thread_id, keep_latest=1, keep_for_s=0)
                await retention.prune_sub_threads(thread_id, await self.snapshot(thread))
            pruned += 1
        return {"pruned_count": pruned}

    async def get_state(self, thread_id: str, checkpoint_id: str | None = None
                        ) -> dict[str, Any]:
        thread = await self.require(thread_id)
        return state_snapshot(await self.snapshot(thread, checkpoint_id))

    async def update_state(self, thread_id: str, values: Any, as_node: str | None,
                           checkpoint_id: str | None = None) -> dict:
        """A new checkpoint with ``values`` applied, after the latest or after
        ``checkpoint_id`` (a fork: the thread then goes on from the new one)."""
        thread = await self.require(thread_id)
        if await self.ctx.inflight_runs(thread_id):
            raise ApiError(409, f"thread {thread_id!r} has a run in progress")
        check_messages(values, "values")
        configurable = {"thread_id": thread_id}
        if checkpoint_id:
            await self.snapshot(thread, checkpoint_id)  # 404 if the thread has no such one
            configurable["checkpoint_id"] = checkpoint_id
        try:
            config = await self.graph(thread).aupdate_state(
                {"configurable": configurable}, values, as_node=as_node
            )
        except InvalidUpdateError as exc:
            raise ApiError(422, first_line(exc)) from exc
        await self.ctx.retention.touch(thread_id, thread)
        checkpoint = config["configurable"]
        return {"checkpoint": checkpoint, "configurable": checkpoint,
                "checkpoint_id": checkpoint.get("checkpoint_id")}

    async def history(self, thread_id: str, limit: int, before: Any,
                      metadata: dict | None) -> list[dict[str, Any]]:
        thread = await self.require(thread_id)
        before_config = None
        if before:
            checkpoint_id = before if isinstance(before, str) else before.get("checkpoint_id")
            before_config = {"configurable": {"thread_id": thread_id,
                                              "checkpoint_id": checkpoint_id}}
        return [state_snapshot(s) async for s in self.graph(thread).aget_state_history(
            {"configurable": {"thread_id": thread_id}}, limit=limit, before=before_config,
            filter=metadata)]

    async def pending_approvals(self, thread_id: str) -> list[dict[str, Any]]:
        snapshot = await self.snapshot(await self.require(thread_id))
        return [{**i.value, "interrupt_id": i.id} for i in snapshot.interrupts]
