"""Runs: checked against their graph, recorded under their thread's lock and handed to the
executor; read, joined, cancelled, deleted. A user's run comes here through
``serve_app.resources.run_road`` (auth, limits, approvals); ``create`` is the road of a caller
inside the process (tests, benchmarks): admission, then ``record``."""

from __future__ import annotations

import time
from typing import Any

from langgraph.graph.state import CompiledStateGraph

from agents import telemetry
from agents.approval import parse_decision
from agents.errors import InvalidDecisionError
from serve_app.resources.api_errors import ApiError
from serve_app.resources.assistants import (
    AssistantsService,
    check_breakpoints,
    check_context,
    merge_config,
)
from serve_app.resources.run_streams import RunStreams
from serve_app.resources.schemas import RunCreate
from serve_app.resources.service_context import ServiceContext
from serve_app.resources.threads import ThreadsService, check_messages
from serve_app.runs.events import API_MODES
from serve_app.runs.jsonable import to_jsonable
from serve_app.runs.records import TERMINAL


def run_checkpoint(body: RunCreate, thread_id: str | None) -> dict[str, Any]:
    """Where the run starts: ``checkpoint`` (with its namespace) or ``checkpoint_id``."""
    ref = body.checkpoint
    if ref is None:
        return {"checkpoint_id": body.checkpoint_id} if body.checkpoint_id else {}
    if body.checkpoint_id and body.checkpoint_id != ref.checkpoint_id:
        raise ApiError(422, "checkpoint_id and checkpoint.checkpoint_id differ")
    if ref.thread_id is not None and ref.thread_id != thread_id:
        raise ApiError(422, f"checkpoint.thread_id {ref.thread_id!r} is not the run's "
                            f"thread {thread_id!r}")
    return {"checkpoint_id": ref.checkpoint_id, "checkpoint_ns": ref.checkpoint_ns,
            "checkpoint_map": ref.checkpoint_map}


def run_durability(body: RunCreate) -> str | None:
    """``durability``, or the deprecated ``checkpoint_during`` mapped onto it."""
    if body.checkpoint_during is None:
        return body.durability
    mapped = "async" if body.checkpoint_during else "exit"
    if body.durability is not None and body.durability != mapped:
        raise ApiError(422, f"checkpoint_during={body.checkpoint_during} contradicts "
                            f"durability={body.durability!r}")
    return mapped


def run_options(body: RunCreate, assistant: dict[str, Any], graph: CompiledStateGraph,
                thread_id: str | None) -> dict[str, Any]:
    """The run's ``kwargs`` besides input and streaming, checked (422 naming the field):
    the assistant's config and context under the run's, breakpoints, durability, the
    checkpoint to start from, feedback keys, the delayed start (the webhook's destination is
    the road's check, ``check_destination``)."""
    if body.strict_resume is False:
        raise ApiError(422, "strict_resume: a resume without a pending interrupt is always "
                            "refused here (409); false is not supported")
    if thread_id is not None and "on_completion" in body.model_fields_set:
        raise ApiError(422, "on_completion: only a thread-less run's thread is deleted or "
                            "kept; a run on a thread keeps it")
    context = {**(assistant.get("context") or {}), **(body.context or {})}
    check_context(graph, context)
    breakpoints = {name: assistant.get(name) if getattr(body, name) is None
                   else getattr(body, name) for name in ("interrupt_before", "interrupt_after")}
    for name, nodes in breakpoints.items():
        check_breakpoints(name, nodes, graph)
    run_config = body.config.model_dump(exclude_none=True) if body.config else {}
    options = {
        "config": merge_config(assistant.get("config") or {}, run_config),
        "context": context or None,
        **breakpoints,
        "durability": run_durability(body), "feedback_keys": body.feedback_keys,
        "after_seconds": body.after_seconds,
        **run_checkpoint(body, thread_id),
    }
    return {k: v for k, v in options.items() if v is not None or k == "config"}


def check_goto(goto: Any, graph: CompiledStateGraph) -> None:
    """``command.goto`` must name nodes of the run's graph (LangGraph would skip others)."""
    targets = goto if isinstance(goto, list) else [goto]
    names = [t.get("node") if isinstance(t, dict) else t for t in targets]
    nodes = set(graph.nodes) - {"__start__"}
    unknown = [name for name in names if name not in nodes]
    if unknown:
        raise ApiError(422, f"command.goto names no node of this graph: {unknown}; "
                            f"nodes: {sorted(nodes)}")


def joined_modes(run: dict[str, Any], asked: list[str] | None) -> frozenset[str] | None:
    """``join_stream``'s ``stream_mode``: some of the run's own modes (422 naming any
    other); None: all of them (the SDK sends an empty value for none)."""
    asked = [mode for mode in asked or [] if mode]
    if not asked:
        return None
    own = run["kwargs"].get("stream_mode") or []
    other = [mode for mode in asked if mode not in own]
    if other:
        raise ApiError(422, f"stream_mode {other}: this run streams {own} only")
    return frozenset(asked)


class RunsService:
    def __init__(self, ctx: ServiceContext, assistants: AssistantsService,
                 threads: ThreadsService, streams: RunStreams):
        self.ctx = ctx
        self.assistants = assistants
        self.threads = threads
        self.streams = streams

    async def admit(self, resume: bool = False, graph_id: str | None = None) -> None:
        """Refuse a new run at once (503, ``Retry-After``) past capacity of the pool that
        runs ``graph_id`` (``serve_app.runs.admission``; ``resume``: it resumes an
        interrupted thread)."""
        refusal = await self.ctx.admission_for(graph_id).check(self.ctx.settings, resume)
        if refusal is not None:
            raise ApiError(503, refusal.detail,
                           headers={"Retry-After": str(refusal.retry_after_s)})

    async def create(self, thread_id: str | None, body: RunCreate,
                     extra_modes: list[str] | None = None) -> dict[str, Any]:
        """A run asked from inside the process (no user): admitted, then ``record``."""
        await self.admit(body.resumes, body.assistant_id)
        return await self.record(thread_id, body, extra_modes)

    async def record(self, thread_id: str | None, body: RunCreate,
                     extra_modes: list[str] | None = None,
                     thread_metadata: dict[str, Any] | None = None,
                     thread: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run checked against its graph (422 naming the field), recorded under the
        thread's lock and queued. ``thread_metadata``: of the thread, if the run creates
        it (the auth handler's); ``thread``: its record, if the caller has just read it."""
        ctx = self.ctx
        assistant = await self.assistants.find(body.assistant_id)
        graph_id = assistant["graph_id"]
        graph = ctx.graphs[graph_id]
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
                check_goto(body.command.goto, graph)
        options = run_options(body, assistant, graph, thread_id)
        resume = body.resumes
        stateless = thread_id is None
        thread, new_metadata = await self.run_thread(thread_id, graph_id, body.if_not_exists,
                                                     thread_metadata, thread)
        thread_id = thread["thread_id"]
        if options.get("checkpoint_id"):  # 404 if none (or pruned)
            await self.threads.snapshot(thread, options["checkpoint_id"])
        if resume:
            await self.check_resume(thread, body.command.resume)
        # rollback needs the runs before this one now; interrupt once it is queued
        inflight = await ctx.inflight_runs(thread_id) \
            if body.multitask_strategy == "rollback" else []
        kwargs = {
            "input": body.input,
            "command": body.command.model_dump(exclude_none=True) if body.command else None,
            "stream_mode": modes, "stream_subgraphs": body.stream_subgraphs,
            **options,
            "trace": telemetry.inject(),  # the run's span continues this request's trace
        }
        if stateless:  # its thread goes after the run unless asked to keep it
            kwargs["on_completion"] = body.on_completion
        if body.multitask_strategy == "rollback":
            started = [r for r in inflight if "checkpoint_before" in r]
            if started:
                kwargs["rollback_to"] = {"checkpoint_id": started[0]["checkpoint_before"]}
        extra: dict[str, Any] = {"webhook": body.webhook} if body.webhook else {}
        if body.after_seconds:  # durable: the pool's delayed set holds it until then
            extra["not_before_ms"] = int((time.time() + body.after_seconds) * 1000)
        # A resume must answer the interrupt it saw: never queue it behind another run.
        reject = body.multitask_strategy == "reject" or resume
        run, joined, before = await ctx.records.create_run(
            thread_id, assistant["assistant_id"], graph_id, kwargs, body.metadata or {},
            body.multitask_strategy, extra, reject=reject, thread_metadata=new_metadata)
        if joined < 0:
            raise ApiError(404, f"thread {thread_id!r} not found")
        if run is None:
            raise ApiError(409, f"thread {thread_id!r} is busy with another run "
                                f"(multitask_strategy={body.multitask_strategy})")
        await ctx.executor.submit(run, first_in_thread=joined == 1)
        if body.multitask_strategy == "interrupt" and before:
            inflight = await ctx.inflight_runs(thread_id, before)
        if body.multitask_strategy in ("interrupt", "rollback"):
            for active in inflight:
                await ctx.executor.cancel(active, body.multitask_strategy)
        return run

    async def run_thread(self, thread_id: str | None, graph_id: str,
                         if_not_exists: str, metadata: dict[str, Any] | None = None,
                         known: dict[str, Any] | None = None
                         ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The run's thread: a new one for thread-less runs, created on demand if asked
        (``known``: its record as just read); and its new metadata if the run names its
        graph (written with the run, ``Records.create_run``), else None."""
        records = self.ctx.records
        new_metadata = {**(metadata or {}), "graph_id": graph_id}
        if thread_id is None:
            thread, _ = await records.create_thread(None, new_metadata)
            return thread, None
        thread = known or await records.get_thread(thread_id)
        if thread is None:
            if if_not_exists != "create":
                raise ApiError(404, f"thread {thread_id!r} not found")
            thread, created = await records.create_thread(thread_id, new_metadata)
            if created:
                await self.ctx.retention.touch(thread_id, thread)
        if "graph_id" in thread["metadata"]:
            return thread, None
        named = {**thread["metadata"], "graph_id": graph_id}
        return {**thread, "metadata": named}, named

    async def check_resume(self, thread: dict[str, Any], resume: Any) -> None:
        """Reject a resume that answers nothing, or an approval decision that is malformed."""
        snapshot = await self.threads.snapshot(thread)
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

    async def get(self, thread_id: str, run_id: str) -> dict[str, Any]:
        run = await self.ctx.records.get_run(thread_id, run_id)
        if run is None:
            raise ApiError(404, f"run {run_id!r} not found in thread {thread_id!r}")
        return run

    async def delete(self, thread_id: str, run_id: str) -> None:
        run = await self.get(thread_id, run_id)
        if run["status"] not in TERMINAL:
            raise ApiError(409, f"run {run_id!r} is {run['status']}; cancel it first")
        await self.ctx.records.delete_run(run)

    async def output(self, run: dict[str, Any]) -> dict[str, Any]:
        """The ``wait`` / ``join`` body: final values, with ``__interrupt__`` or ``__error__``."""
        if run.get("error"):
            return {"__error__": run["error"]}
        thread = await self.threads.require(run["thread_id"])
        snapshot = await self.threads.snapshot(thread)
        output = to_jsonable(snapshot.values)
        if snapshot.interrupts:
            output["__interrupt__"] = to_jsonable(list(snapshot.interrupts))
        return output

    async def join(self, thread_id: str, run_id: str) -> dict[str, Any]:
        """Wait for the run's end, then its ``output``."""
        return await self.output(await self.streams.wait_for_end(thread_id, run_id))

    async def cancel_many(self, thread_id: str, run_ids: list[str] | None,
                          status: str | None, action: str) -> None:
        """The thread's runs not ended yet, those of ``run_ids`` and ``status`` (pending,
        running, all) if given."""
        for run in await self.ctx.inflight_runs(thread_id):
            if (run_ids is None or run["run_id"] in run_ids) and \
                    status in (None, "all", run["status"]):
                await self.ctx.executor.cancel(run, action)

    async def cancel(self, thread_id: str, run_id: str, wait: bool, action: str) -> None:
        run = await self.get(thread_id, run_id)
        if run["status"] in TERMINAL:
            return
        await self.ctx.executor.cancel(run, action)
        if wait:
            await self.streams.wait_for_end(thread_id, run_id)
