"""What the HTTP API does, independent of FastAPI: threads, state, runs and their streams."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.messages import convert_to_messages
from langgraph.errors import InvalidUpdateError
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agents import telemetry
from agents.approval import parse_decision
from agents.errors import InvalidDecisionError
from agents.redis_saver import LeanRedisSaver
from agents.settings import ApiSettings, RetentionSettings
from agents.system import AgentSystem
from serve_app.admission import Admission
from serve_app.event_feed import EventFeed
from serve_app.events import API_MODES, HEARTBEAT, sse_frame
from serve_app.executor import RunExecutor
from serve_app.jsonable import dumps, to_jsonable
from serve_app.keys import events_key
from serve_app.metrics import Metrics
from serve_app.records import TERMINAL, Records
from serve_app.retention import Retention

ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
DEFAULT_GRAPH = "supervisor"


class ApiError(Exception):
    """An error with an HTTP status and a ``detail`` for the client."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


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


def check_goto(goto: Any, graph: CompiledStateGraph) -> None:
    """``command.goto`` must name nodes of the run's graph (LangGraph would skip others)."""
    targets = goto if isinstance(goto, list) else [goto]
    names = [t.get("node") if isinstance(t, dict) else t for t in targets]
    nodes = set(graph.nodes) - {"__start__"}
    unknown = [name for name in names if name not in nodes]
    if unknown:
        raise ApiError(422, f"command.goto names no node of this graph: {unknown}; "
                            f"nodes: {sorted(nodes)}")


def first_line(exc: Exception) -> str:
    """The reason without the troubleshooting link LangChain appends."""
    return str(exc).strip().split("\n")[0]


def assistant_id(graph_id: str) -> str:
    return str(uuid.uuid5(ASSISTANT_NAMESPACE, graph_id))


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


class AgentService:
    def __init__(self, redis: Redis, graphs: dict[str, CompiledStateGraph],
                 settings: ApiSettings, replica_id: str, checkpointer: LeanRedisSaver,
                 pool: str | None = None, metrics: Metrics | None = None,
                 retention: RetentionSettings | None = None):
        self.redis = redis
        self.records = Records(redis)
        self.graphs = graphs
        self.settings = self.base_settings = settings
        self.replica_id = replica_id
        self.metrics = metrics or Metrics()
        self.executor = RunExecutor(redis, graphs, settings, replica_id, checkpointer, pool,
                                    self.metrics)
        self.feed = EventFeed(redis)
        self.admission = Admission(self.executor.pool, self.metrics)
        self.retention = Retention(redis, checkpointer, retention or RetentionSettings(),
                                   self.records, self.metrics)
        self.executor.retention = self.retention

    def retune(self, **limits: Any) -> ApiSettings:
        """Admission limits (``api.*`` fields) over the replica's own settings, live; no
        limits: back to its own settings."""
        unknown = sorted(set(limits) - set(ApiSettings.model_fields))
        if unknown:
            raise ValueError(f"not api settings: {unknown}; "
                             f"known: {sorted(ApiSettings.model_fields)}")
        self.settings = ApiSettings.model_validate({**self.base_settings.model_dump(),
                                                    **limits})
        self.executor.retune(self.settings)
        return self.settings

    async def aclose(self) -> None:
        """Stop the executor's background work and the event feed (not the runs)."""
        await self.executor.aclose()
        await self.feed.aclose()

    @classmethod
    def in_process(cls, system: AgentSystem, replica_id: str) -> AgentService:
        """The service over one process's graphs, specialists in-process, no Ray: the
        benchmark's floor and the service's tests. Its runs go to a pool of its own."""
        runtime = system.runtime
        graphs = {"supervisor": system.supervisor, **system.specialists}
        return cls(runtime.redis, graphs, runtime.settings.api, replica_id, runtime.checkpointer,
                   pool=f"in-process:{replica_id}", retention=runtime.settings.retention)

    # assistants
    def assistants(self) -> list[dict[str, Any]]:
        return [{"assistant_id": assistant_id(g), "graph_id": g, "name": g, "config": {},
                 "context": {}, "metadata": {"created_by": "system"}, "version": 1,
                 "created_at": "2026-01-01T00:00:00+00:00",
                 "updated_at": "2026-01-01T00:00:00+00:00", "description": None}
                for g in self.graphs]

    def graph_id(self, assistant: str) -> str:
        """A graph name or its default assistant's id."""
        if assistant in self.graphs:
            return assistant
        for graph in self.graphs:
            if assistant_id(graph) == assistant:
                return graph
        raise ApiError(404, f"assistant {assistant!r} not found")

    def get_assistant(self, assistant: str) -> dict[str, Any]:
        try:
            uuid.UUID(assistant)
        except ValueError:
            raise ApiError(422, f"assistant id must be a UUID, got {assistant!r}") from None
        graph = self.graph_id(assistant)
        return next(a for a in self.assistants() if a["graph_id"] == graph)

    # threads
    async def require_thread(self, thread_id: str) -> dict[str, Any]:
        thread = await self.records.get_thread(thread_id)
        if thread is None:
            raise ApiError(404, f"thread {thread_id!r} not found")
        return thread

    def thread_graph(self, thread: dict[str, Any]) -> CompiledStateGraph:
        return self.graphs[thread.get("metadata", {}).get("graph_id", DEFAULT_GRAPH)]

    async def snapshot(self, thread: dict[str, Any],
                       checkpoint_id: str | None = None) -> StateSnapshot:
        """The thread's state, latest or at ``checkpoint_id`` (404 if it has no such one)."""
        configurable = {"thread_id": thread["thread_id"]}
        if checkpoint_id:
            configurable["checkpoint_id"] = checkpoint_id
        snapshot = await self.thread_graph(thread).aget_state({"configurable": configurable})
        if checkpoint_id and snapshot.created_at is None:
            raise ApiError(404, f"checkpoint {checkpoint_id!r} not found in thread "
                                f"{thread['thread_id']!r} (never made, or pruned by the "
                                f"retention policy: a thread keeps its latest "
                                f"{self.retention.settings.keep_latest} checkpoints)")
        return snapshot

    async def thread_view(self, thread: dict[str, Any]) -> dict[str, Any]:
        snapshot = await self.snapshot(thread)
        interrupts: dict[str, list] = {}
        for task in snapshot.tasks:
            if task.interrupts:
                interrupts[task.id] = to_jsonable(list(task.interrupts))
        return {**thread, "values": to_jsonable(snapshot.values), "interrupts": interrupts,
                "error": thread.get("error")}

    async def search_threads(self, body: Any, where: Any = None) -> list[dict[str, Any]]:
        """``where``: a predicate on thread records (an auth handler's filter) on top."""
        found = await self.records.search_threads(body.limit, body.offset, body.metadata,
                                                  body.status, where)
        return list(await asyncio.gather(*(self.thread_view(t) for t in found)))

    async def create_thread(self, thread_id: str | None, metadata: dict[str, Any] | None,
                            ttl: Any = None, if_exists: str = "raise") -> dict[str, Any]:
        thread, created = await self.records.create_thread(thread_id, metadata,
                                                           ttl=thread_ttl(ttl))
        if not created and if_exists == "raise":
            raise ApiError(409, f"thread {thread_id!r} already exists")
        if created:
            await self.retention.touch(thread["thread_id"], thread)
        return await self.thread_view(thread)

    async def update_thread(self, thread_id: str, metadata: dict[str, Any],
                            ttl: Any = None) -> dict[str, Any]:
        """Merge ``metadata`` into the thread's; a ``ttl`` replaces its TTL."""
        thread = await self.require_thread(thread_id)
        fields: dict[str, Any] = {"metadata": {**thread["metadata"], **metadata}}
        if ttl is not None:
            fields["ttl"] = thread_ttl(ttl)
        thread = await self.records.update_thread(thread_id, **fields)
        await self.retention.touch(thread_id, thread)
        return await self.thread_view(thread)

    async def delete_thread(self, thread_id: str) -> None:
        """Every key of the thread goes. A busy thread's runs are cancelled first; if they
        have not ended within ``retention.delete_wait_s``, 409 (nothing is deleted)."""
        await self.require_thread(thread_id)
        inflight = await self.inflight_runs(thread_id)
        if inflight:
            for run in inflight:
                await self.executor.cancel(run, "interrupt")
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(self.wait_for_end(thread_id, r["run_id"])
                                     for r in inflight)),
                    self.retention.settings.delete_wait_s)
            except TimeoutError:
                raise ApiError(409, f"thread {thread_id!r} is busy: its runs were cancelled "
                                    "but have not ended yet; retry the delete") from None
        await self.retention.purge(thread_id, self.executor.pool)

    async def prune_threads(self, thread_ids: list[str], strategy: str) -> dict[str, int]:
        """LangGraph Platform's prune: ``delete`` deletes the threads; ``keep_latest`` keeps
        each thread and its latest state only (older checkpoints, finished specialists'
        sub-threads). Threads that do not exist are skipped."""
        pruned = 0
        for thread_id in dict.fromkeys(thread_ids):
            thread = await self.records.get_thread(thread_id)
            if thread is None:
                continue
            if strategy == "delete":
                await self.delete_thread(thread_id)
            else:
                await self.retention.prune_checkpoints(thread_id, keep_latest=1, keep_for_s=0)
                await self.retention.prune_sub_threads(thread_id, await self.snapshot(thread))
            pruned += 1
        return {"pruned_count": pruned}

    async def get_state(self, thread_id: str, checkpoint_id: str | None = None
                        ) -> dict[str, Any]:
        thread = await self.require_thread(thread_id)
        return state_snapshot(await self.snapshot(thread, checkpoint_id))

    async def update_state(self, thread_id: str, values: Any, as_node: str | None,
                           checkpoint_id: str | None = None) -> dict:
        """A new checkpoint with ``values`` applied, after the latest or after
        ``checkpoint_id`` (a fork: the thread then goes on from the new one)."""
        thread = await self.require_thread(thread_id)
        if await self.inflight_runs(thread_id):
            raise ApiError(409, f"thread {thread_id!r} has a run in progress")
        check_messages(values, "values")
        configurable = {"thread_id": thread_id}
        if checkpoint_id:
            await self.snapshot(thread, checkpoint_id)  # 404 if the thread has no such one
            configurable["checkpoint_id"] = checkpoint_id
        try:
            config = await self.thread_graph(thread).aupdate_state(
                {"configurable": configurable}, values, as_node=as_node
            )
        except InvalidUpdateError as exc:
            raise ApiError(422, first_line(exc)) from exc
        await self.retention.touch(thread_id, thread)
        checkpoint = config["configurable"]
        return {"checkpoint": checkpoint, "configurable": checkpoint,
                "checkpoint_id": checkpoint.get("checkpoint_id")}

    async def history(self, thread_id: str, limit: int, before: Any,
                      metadata: dict | None) -> list[dict[str, Any]]:
        thread = await self.require_thread(thread_id)
        before_config = None
        if before:
            checkpoint_id = before if isinstance(before, str) else before.get("checkpoint_id")
            before_config = {"configurable": {"thread_id": thread_id,
                                              "checkpoint_id": checkpoint_id}}
        graph = self.thread_graph(thread)
        return [state_snapshot(s) async for s in graph.aget_state_history(
            {"configurable": {"thread_id": thread_id}}, limit=limit, before=before_config,
            filter=metadata)]

    # runs
    async def inflight_runs(self, thread_id: str) -> list[dict[str, Any]]:
        runs = [await self.records.get_run(thread_id, rid) for rid in
                await self.executor.leases.queued(thread_id)]
        return [r for r in runs if r and r["status"] not in TERMINAL]

    async def admit(self) -> None:
        """Refuse a new run at once (503, ``Retry-After``) past capacity
        (``serve_app.admission``)."""
        refusal = await self.admission.check(self.settings)
        if refusal is not None:
            raise ApiError(503, refusal.detail,
                           headers={"Retry-After": str(refusal.retry_after_s)})

    async def create_run(self, thread_id: str | None, body: Any,
                         extra_modes: list[str] | None = None,
                         thread_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """``thread_metadata``: of the thread, if the run creates it (the auth handler's)."""
        graph_id = self.graph_id(body.assistant_id)
        modes = [body.stream_mode] if isinstance(body.stream_mode, str) else body.stream_mode
        modes = list(dict.fromkeys([*modes, *(extra_modes or [])]))
        unsupported = [m for m in modes if m not in API_MODES and m not in (extra_modes or [])]
        if unsupported:
            raise ApiError(422, f"unsupported stream_mode {unsupported}; "
                                f"supported: {sorted(API_MODES)}")
        check_messages(body.input, "input")
        if body.command is not None:
            check_messages(body.command.update, "command.update")
            if body.command.goto is not None:
                check_goto(body.command.goto, self.graphs[graph_id])
        await self.admit()
        stateless = thread_id is None
        thread = await self._run_thread(thread_id, graph_id, body.if_not_exists,
                                        thread_metadata)
        thread_id = thread["thread_id"]
        if body.checkpoint_id:
            await self.snapshot(thread, body.checkpoint_id)  # 404 if none (or pruned)
        resume = body.command is not None and body.command.resume is not None
        if resume:
            await self.check_resume(thread, body.command.resume)
        inflight = await self.inflight_runs(thread_id)
        kwargs = {
            "input": body.input,
            "command": body.command.model_dump(exclude_none=True) if body.command else None,
            "stream_mode": modes,
            "config": body.config.model_dump(exclude_none=True) if body.config else {},
            "checkpoint_id": body.checkpoint_id, "stream_subgraphs": body.stream_subgraphs,
            "trace": telemetry.inject(),  # the run's span continues this request's trace
        }
        if stateless:  # its thread goes after the run unless asked to keep it
            kwargs["on_completion"] = body.on_completion
        if body.multitask_strategy == "rollback":
            started = [r for r in inflight if "checkpoint_before" in r]
            if started:
                kwargs["rollback_to"] = {"checkpoint_id": started[0]["checkpoint_before"]}
        run = await self.records.create_run(thread_id, assistant_id(graph_id), graph_id, kwargs,
                                            body.metadata or {}, body.multitask_strategy)
        # A resume must answer the interrupt it saw: never queue it behind another run.
        reject = body.multitask_strategy == "reject" or resume
        joined = await self.executor.leases.join(thread_id, run["run_id"], reject)
        if not joined:
            await self.records.delete_run(run)
            raise ApiError(409, f"thread {thread_id!r} is busy with another run "
                                f"(multitask_strategy={body.multitask_strategy})")
        await self.executor.submit(run, first_in_thread=joined == 1)
        if body.multitask_strategy in ("interrupt", "rollback"):
            for active in inflight:
                await self.executor.cancel(active, body.multitask_strategy)
        return run

    async def _run_thread(self, thread_id: str | None, graph_id: str,
                          if_not_exists: str, metadata: dict[str, Any] | None = None
                          ) -> dict[str, Any]:
        """The run's thread: a new one for thread-less runs, created on demand if asked."""
        new_metadata = {**(metadata or {}), "graph_id": graph_id}
        if thread_id is None:
            thread, _ = await self.records.create_thread(None, new_metadata)
            return thread
        thread = await self.records.get_thread(thread_id)
        if thread is None:
            if if_not_exists != "create":
                raise ApiError(404, f"thread {thread_id!r} not found")
            thread, created = await self.records.create_thread(thread_id, new_metadata)
            if created:
                await self.retention.touch(thread_id, thread)
        if "graph_id" not in thread["metadata"]:
            thread = await self.records.update_thread(
                thread_id, metadata={**thread["metadata"], "graph_id": graph_id})
        return thread

    async def check_resume(self, thread: dict[str, Any], resume: Any) -> None:
        """Reject a resume that answers nothing, or an approval decision that is malformed."""
        snapshot = await self.snapshot(thread)
        pending = {i.id: i.value for i in snapshot.interrupts}
        if not pending:
            raise ApiError(409, f"thread {thread['thread_id']!r} has no pending interrupt")
        answers = resume if isinstance(resume, dict) and set(resume) <= set(pending) and resume \
            else dict.fromkeys(pending, resume)
        for interrupt_id, value in answers.items():
            if isinstance(pending.get(interrupt_id), dict) and \
                    pending[interrupt_id].get("type") == "approval":
                try:
                    parse_decision(value)
                except InvalidDecisionError as exc:
                    raise ApiError(422, str(exc)) from exc

    async def delete_run(self, thread_id: str, run_id: str) -> None:
        run = await self.get_run(thread_id, run_id)
        if run["status"] not in TERMINAL:
            raise ApiError(409, f"run {run_id!r} is {run['status']}; cancel it first")
        await self.records.delete_run(run)

    def graph_drawing(self, assistant: str, xray: bool | int) -> dict[str, Any]:
        """Nodes and edges of an assistant's graph, as LangGraph draws it."""
        return self.graphs[self.graph_id(assistant)].get_graph(xray=xray).to_json()

    def schemas(self, assistant: str) -> dict[str, Any]:
        graph_id = self.graph_id(assistant)
        graph = self.graphs[graph_id]
        state = graph.get_output_jsonschema()  # no output schema of its own: the state's
        return {"graph_id": graph_id, "input_schema": graph.get_input_jsonschema(),
                "output_schema": state, "state_schema": state,
                "config_schema": None, "context_schema": graph.get_context_jsonschema()}

    async def get_run(self, thread_id: str, run_id: str) -> dict[str, Any]:
        run = await self.records.get_run(thread_id, run_id)
        if run is None:
            raise ApiError(404, f"run {run_id!r} not found in thread {thread_id!r}")
        return run

    async def stream_events(self, thread_id: str, run_id: str,
                            last_id: str = "0") -> AsyncIterator[bytes]:
        """SSE frames of a run from its Redis Stream, after ``last_id``, until it ends.

        Stays open across the run's attempts and always ends with its outcome: if the run
        is over but its stream never got the end (the writes failed, or the events
        expired), the end is told from the run's record. Redis errors while waiting are
        waited out, not turned into a cut connection a client would take for the end."""
        key = events_key(thread_id, run_id)
        ended_seen = False
        batches = self.feed.follow(key, last_id, self.settings.heartbeat_s)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                if batch is None:
                    try:
                        run = await self.records.get_run(thread_id, run_id)
                    except RedisError:
                        run = {"status": "unknown"}
                    if run is None:
                        return  # deleted (rollback)
                    if run["status"] in TERMINAL:
                        if ended_seen:  # a whole idle period after the end: none will come
                            yield _end_frames(run)
                            return
                        ended_seen = True
                    yield HEARTBEAT
                    continue
                frames, ended = [], False
                for event_id, fields in batch:
                    frames.append(sse_frame(fields[b"event"], fields[b"data"], event_id))
                    if fields[b"event"] in (b"end", b"error"):
                        ended = True
                        break
                yield b"".join(frames)  # one chunk per batch: fewer messages to the proxy
                if ended:
                    return

    async def wait_for_end(self, thread_id: str, run_id: str) -> dict[str, Any]:
        """Block until the run is terminal (whichever replica runs it)."""
        async for _ in self.stream_events(thread_id, run_id):
            pass
        for _ in range(100):  # the record is written just before the stream's end event
            run = await self.records.get_run(thread_id, run_id)
            if run is None or run["status"] in TERMINAL:
                return run
            await asyncio.sleep(0.05)
        return run

    async def run_output(self, run: dict[str, Any]) -> dict[str, Any]:
        """The ``wait`` / ``join`` body: final values, with ``__interrupt__`` or ``__error__``."""
        if run.get("error"):
            return {"__error__": run["error"]}
        thread = await self.require_thread(run["thread_id"])
        snapshot = await self.snapshot(thread)
        output = to_jsonable(snapshot.values)
        if snapshot.interrupts:
            output["__interrupt__"] = to_jsonable(list(snapshot.interrupts))
        return output

    async def cancel_run(self, thread_id: str, run_id: str, wait: bool, action: str) -> None:
        run = await self.get_run(thread_id, run_id)
        if run["status"] in TERMINAL:
            return
        await self.executor.cancel(run, action)
        if wait:
            await self.wait_for_end(thread_id, run_id)

    async def pending_approvals(self, thread_id: str) -> list[dict[str, Any]]:
        snapshot = await self.snapshot(await self.require_thread(thread_id))
        return [{**i.value, "interrupt_id": i.id} for i in snapshot.interrupts]


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


def _end_frames(run: dict[str, Any]) -> bytes:
    """The end of a run told from its record (no event id: nothing to resume after)."""
    frames = b""
    if run.get("error"):
        frames += sse_frame(b"error", dumps(run["error"]).encode(), None)
    status = {"run_id": run["run_id"], "status": run["status"]}
    return frames + sse_frame(b"end", dumps(status).encode(), None)
