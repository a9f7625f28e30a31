"""The HTTP API: LangGraph Platform's routes (so ``langgraph_sdk`` works unchanged) plus the
seed's ``/api/chat`` and ``/api/approve``. Thin: every route delegates to ``AgentService``,
through ``Access`` (auth handlers' checks and filters, approvals, per-user limits) for
anything a user owns. Every request is authenticated first unless its route is public
(``serve_app.api.routes_auth``), and no body is read past ``limits.max_body_bytes``."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from agents.settings import AuthSettings, LimitsSettings, get_settings
from serve_app.api.access import Access
from serve_app.api.console import mount_console
from serve_app.api.middleware import Authenticate, ReplicaHeader
from serve_app.api.routes_assistants import add_assistant_routes
from serve_app.api.routes_crons import CronAccess, add_cron_routes
from serve_app.api.routes_store import add_store_routes
from serve_app.resources.api_errors import ApiError
from serve_app.resources.assistants import DEFAULT_GRAPH
from serve_app.resources.auth import Authorizer
from serve_app.resources.crons import Crons
from serve_app.resources.limits import BodyLimit, Limits
from serve_app.resources.runs import joined_modes
from serve_app.resources.schemas import (
    ApproveRequest,
    ChatRequest,
    HistoryQuery,
    RunBatchItem,
    RunCancelMany,
    RunCreate,
    StateAt,
    StateUpdate,
    ThreadCount,
    ThreadCreate,
    ThreadPatch,
    ThreadPrune,
    ThreadSearch,
)
from serve_app.resources.service import AgentService
from serve_app.resources.store import StoreService
from serve_app.runs.records import RunStatus
from serve_app.runs.regressions import RunFeedback, record_feedback
from serve_app.telemetry.tracing import TraceMiddleware

log = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def build_api(service: AgentService, auth: AuthSettings | Authorizer | None = None,
              limits: LimitsSettings | None = None) -> FastAPI:
    """The app over ``service``; ``auth`` and ``limits`` default to the process settings."""
    authorizer = auth if isinstance(auth, Authorizer) else \
        Authorizer.from_settings(auth or get_settings().auth)
    limits = limits or get_settings().limits
    access = Access(service, authorizer, Limits(service.redis, limits))
    api = FastAPI(title="Agent Cluster", version="0.1.0")
    api.state.access = access
    # the Store API, crons (their ticks run in serve_app.resources.scheduled) and webhooks
    add_store_routes(api, StoreService(service.redis, authorizer))
    add_cron_routes(api, CronAccess(access, Crons(service.redis), access.outbox))

    @api.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status,
                            headers=exc.headers)

    @api.exception_handler(RedisError)
    async def redis_error(_: Request, exc: RedisError) -> JSONResponse:
        """Redis slow or restarting: nothing was lost, the request can be sent again."""
        log.warning("request failed on Redis: %s", exc)
        if is_out_of_memory(exc):
            return JSONResponse({"detail": "state store full: Redis reached its maxmemory "
                                           "(noeviction), so writes are refused; nothing "
                                           "stored was lost. Retry once threads are deleted "
                                           "or expire, or maxmemory is raised"},
                                status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"detail": f"state store unavailable ({type(exc).__name__}); "
                                       "retry shortly"},
                            status_code=503, headers={"Retry-After": "1"})

    @api.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"},
                            status_code=500)

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors()}, status_code=422)

    api.add_middleware(Authenticate, api=api, authorizer=authorizer)
    api.add_middleware(ReplicaHeader, replica_id=lambda: service.replica_id)
    api.add_middleware(BodyLimit, limit=limits.max_body_bytes)

    def sse(run: dict[str, Any], frames: AsyncIterator[bytes]) -> StreamingResponse:
        location = run_location(run)
        return StreamingResponse(frames, media_type="text/event-stream", headers={
            **SSE_HEADERS, "Location": f"{location}/stream", "Content-Location": location})

    # health and identity
    @api.get("/ok")
    async def ok() -> dict:
        return {"ok": True}

    @api.get("/info")
    async def info() -> dict:
        return {"version": "0.1.0", "flags": {"assistants": True, "crons": True}}

    @api.get("/metrics")
    async def metrics() -> PlainTextResponse:
        """This replica's run metrics in Prometheus' text format."""
        return PlainTextResponse(service.metrics.prometheus(replica=service.replica_id),
                                 media_type="text/plain; version=0.0.4")

    @api.get("/whoami")
    async def whoami() -> dict:
        return {"replica_id": service.replica_id, "pid": os.getpid()}

    add_assistant_routes(api, access)

    # threads
    @api.post("/threads")
    async def create_thread(request: Request, body: ThreadCreate) -> dict:
        return await access.create_thread(request, body)

    @api.post("/threads/prune")
    async def prune_threads(request: Request, body: ThreadPrune) -> dict:
        return await access.prune_threads(request, body)

    @api.post("/threads/search")
    async def search_threads(request: Request, body: ThreadSearch) -> list[dict]:
        return await access.search_threads(request, body)

    @api.post("/threads/count")
    async def count_threads(request: Request, body: ThreadCount) -> int:
        return await access.count_threads(request, body)

    @api.post("/threads/{thread_id}/copy")
    async def copy_thread(request: Request, thread_id: str) -> dict:
        return await access.copy_thread(request, thread_id)

    @api.get("/threads/{thread_id}")
    async def get_thread(request: Request, thread_id: str, include: str | None = None) -> dict:
        extra = [name for name in (include or "").split(",") if name and name != "ttl"]
        if extra:  # a thread's ttl is always included
            raise ApiError(422, f"include: {extra} not supported; only 'ttl'")
        return await service.threads.view(await access.thread(request, thread_id))

    @api.patch("/threads/{thread_id}", response_model=None)
    async def patch_thread(request: Request, thread_id: str,
                           body: ThreadPatch) -> dict | Response:
        updated = await access.update_thread(request, thread_id, body)
        if "return=minimal" in request.headers.get("prefer", ""):  # SDK's return_minimal
            return Response(status_code=204)
        return updated

    @api.delete("/threads/{thread_id}", status_code=204)
    async def delete_thread(request: Request, thread_id: str) -> None:
        await access.delete_thread(request, thread_id)

    @api.get("/threads/{thread_id}/state")
    async def get_state(request: Request, thread_id: str) -> dict:
        await access.thread(request, thread_id)
        return await service.threads.get_state(thread_id)

    @api.get("/threads/{thread_id}/state/{checkpoint_id}")
    async def get_state_at(request: Request, thread_id: str, checkpoint_id: str) -> dict:
        await access.thread(request, thread_id)
        return await service.threads.get_state(thread_id, checkpoint_id)

    @api.post("/threads/{thread_id}/state/checkpoint")
    async def post_state_at(request: Request, thread_id: str, body: StateAt) -> dict:
        await access.thread(request, thread_id)
        return await service.threads.get_state(thread_id, body.checkpoint.checkpoint_id)

    @api.post("/threads/{thread_id}/state")
    async def update_state(request: Request, thread_id: str, body: StateUpdate) -> dict:
        return await access.update_state(request, thread_id, body)

    @api.post("/threads/{thread_id}/history")
    async def history(request: Request, thread_id: str, body: HistoryQuery) -> list[dict]:
        await access.thread(request, thread_id)
        return await service.threads.history(thread_id, body.limit, body.before, body.metadata)

    @api.get("/threads/{thread_id}/approvals")
    async def approval_log(request: Request, thread_id: str,
                           after: Annotated[str | None, Query(max_length=64)] = None,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
        """The thread's approval log, oldest first: who decided what, when, on which call
        (original and edited args, reason, interrupt); ``after`` an entry id to page."""
        return await access.approval_log(request, thread_id, after, limit)

    # runs on a thread, and thread-less runs
    @api.post("/threads/{thread_id}/runs")
    async def create_run(request: Request, thread_id: str, body: RunCreate) -> JSONResponse:
        return created(await access.create_run(request, thread_id, background(body)))

    @api.post("/runs")
    async def create_stateless_run(request: Request, body: RunCreate) -> JSONResponse:
        return created(await access.create_run(request, None, background(body)))

    def background(body: RunCreate) -> RunCreate:
        """A run nobody waits on has no client to lose: ``on_disconnect: cancel`` is
        refused rather than ignored."""
        if body.on_disconnect == "cancel":
            raise ApiError(422, "on_disconnect: 'cancel' applies to runs.stream and "
                                "runs.wait; a created run has no connection to lose")
        return body

    def created(run: dict[str, Any]) -> JSONResponse:
        return JSONResponse(run, headers={"Content-Location": run_location(run)})

    @api.post("/threads/{thread_id}/runs/stream")
    async def stream_run(request: Request, thread_id: str, body: RunCreate) -> StreamingResponse:
        run = await access.create_run(request, thread_id, body)
        return sse(run, run_events(run, body.on_disconnect == "cancel"))

    @api.post("/runs/stream")
    async def stream_stateless_run(request: Request, body: RunCreate) -> StreamingResponse:
        run = await access.create_run(request, None, body)
        return sse(run, run_events(run, body.on_disconnect == "cancel"))

    def run_events(run: dict[str, Any], cancel_on_disconnect: bool, last_id: str = "0",
                   modes: frozenset[str] | None = None) -> AsyncIterator[bytes]:
        streams = service.streams
        follow = streams.events_or_cancel if cancel_on_disconnect else streams.events
        return follow(run["thread_id"], run["run_id"], last_id, modes)

    @api.post("/threads/{thread_id}/runs/wait")
    async def wait_run(request: Request, thread_id: str, body: RunCreate) -> JSONResponse:
        run = await access.create_run(request, thread_id, body)
        return await waited(run, body.on_disconnect == "cancel")

    @api.post("/runs/wait")
    async def wait_stateless_run(request: Request, body: RunCreate) -> JSONResponse:
        run = await access.create_run(request, None, body)
        return await waited(run, body.on_disconnect == "cancel")

    async def waited(run: dict[str, Any], cancel_on_disconnect: bool) -> JSONResponse:
        """The run's output; ``Location`` is its join, where a cut-off client reconnects.
        A client that goes first cancels the run if it asked to (``on_disconnect``)."""
        location = run_location(run)
        try:
            output = await service.runs.join(run["thread_id"], run["run_id"])
        except asyncio.CancelledError:
            if cancel_on_disconnect:
                await asyncio.shield(service.streams.cancel_unless_ended(run["thread_id"],
                                                                         run["run_id"]))
            raise
        return JSONResponse(output, headers={"Location": f"{location}/join",
                                             "Content-Location": location})

    @api.post("/runs/batch")
    async def create_batch(request: Request, body: list[RunBatchItem]) -> list[dict]:
        """Several runs at once, each as ``runs.create`` would make it; admitted as a
        whole (a body that fails validation makes none)."""
        await service.runs.admit()
        runs = []
        for item in body:
            run = RunCreate(**item.model_dump(exclude={"thread_id"}, exclude_unset=True))
            runs.append(await access.create_run(request, item.thread_id, background(run),
                                                admitted=True))
        return runs

    @api.post("/runs/cancel", status_code=204)
    async def cancel_many(request: Request, body: RunCancelMany,
                          action: Literal["interrupt", "rollback"] = "interrupt") -> None:
        if body.thread_id is None:
            raise ApiError(422, "thread_id: cancelling runs across every thread is not "
                                "supported; name the thread")
        await access.thread(request, body.thread_id, "update", {"action": action})
        await service.runs.cancel_many(body.thread_id, body.run_ids, body.status, action)

    @api.get("/threads/{thread_id}/runs")
    async def list_runs(request: Request, thread_id: str,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 10,
                        offset: Annotated[int, Query(ge=0)] = 0,
                        status: RunStatus | None = None,
                        select: Annotated[list[str] | None, Query()] = None) -> list[dict]:
        await access.thread(request, thread_id)
        runs = await service.records.list_runs(thread_id, limit, offset, status)
        return [{k: r.get(k) for k in select} for r in runs] if select else runs

    @api.get("/threads/{thread_id}/runs/{run_id}")
    async def get_run(request: Request, thread_id: str, run_id: str) -> dict:
        await access.thread(request, thread_id, "read", {"run_id": run_id})
        return await service.runs.get(thread_id, run_id)

    @api.delete("/threads/{thread_id}/runs/{run_id}", status_code=204)
    async def delete_run(request: Request, thread_id: str, run_id: str) -> None:
        await access.thread(request, thread_id, "delete", {"run_id": run_id})
        await service.runs.delete(thread_id, run_id)

    @api.get("/threads/{thread_id}/runs/{run_id}/join")
    async def join_run(request: Request, thread_id: str, run_id: str) -> dict:
        await access.thread(request, thread_id, "read", {"run_id": run_id})
        await service.runs.get(thread_id, run_id)
        return await service.runs.join(thread_id, run_id)

    @api.get("/threads/{thread_id}/runs/{run_id}/stream")
    async def join_stream(
        request: Request, thread_id: str, run_id: str,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        cancel_on_disconnect: bool = False,
        stream_mode: Annotated[list[str] | None, Query()] = None,
    ) -> StreamingResponse:
        """Join a run's stream from any replica, resuming after ``Last-Event-ID``; with
        ``stream_mode``, only those of the run's modes."""
        await access.thread(request, thread_id, "read", {"run_id": run_id})
        run = await service.runs.get(thread_id, run_id)
        return sse(run, run_events(run, cancel_on_disconnect, event_id(last_event_id) or "0",
                                   joined_modes(run, stream_mode)))

    @api.post("/threads/{thread_id}/runs/{run_id}/cancel", status_code=202)
    async def cancel_run(request: Request, thread_id: str, run_id: str, wait: bool = False,
                         action: str = "interrupt") -> None:
        if action not in ("interrupt", "rollback"):
            raise ApiError(422, "action must be 'interrupt' or 'rollback'")
        await access.thread(request, thread_id, "update",
                            {"run_id": run_id, "action": action})
        await service.runs.cancel(thread_id, run_id, wait, action)

    # the seed's simple chat endpoints
    @api.post("/api/chat")
    async def chat(request: Request, body: ChatRequest):
        run_body = RunCreate(assistant_id=DEFAULT_GRAPH, if_not_exists="create", stream_mode=[],
                             input={"messages": [{"role": "user", "content": body.message}]})
        run = await access.create_run(request, body.thread_id, run_body, extra_modes=["chat"])
        return await chat_response(run, body.stream)

    @api.post("/api/approve")
    async def approve(request: Request, body: ApproveRequest):
        """Decide a pending approval; it needs the approver permission, and the decision
        records the authenticated identity (a body's ``by`` counts only without auth)."""
        decision = body.model_dump(include={"action", "args", "by", "reason"}, exclude_none=True)
        resume = {body.interrupt_id: decision} if body.interrupt_id else decision
        run_body = RunCreate(assistant_id=DEFAULT_GRAPH, stream_mode=[],
                             command={"resume": resume})
        run = await access.approve(request, body, run_body)
        return await chat_response(run, body.stream)

    async def chat_response(run: dict[str, Any], stream: bool):
        if stream:
            return sse(run, service.streams.events(run["thread_id"], run["run_id"]))
        run = await service.streams.wait_for_end(run["thread_id"], run["run_id"])
        output = await service.runs.output(run)
        base = {"thread_id": run["thread_id"], "run_id": run["run_id"]}
        if "__error__" in output:
            return JSONResponse({**base, "status": "error", "error": output["__error__"]},
                                status_code=500)
        if "__interrupt__" in output:
            approvals = await service.threads.pending_approvals(run["thread_id"])
            return JSONResponse({**base, "status": "awaiting_approval", "approvals": approvals},
                                status_code=202)
        messages = output.get("messages") or []
        answer = messages[-1].get("content", "") if messages else ""
        return {**base, "status": "done", "answer": answer}

    @api.post("/threads/{thread_id}/runs/{run_id}/feedback")
    async def run_feedback(request: Request, thread_id: str, run_id: str,
                           body: RunFeedback) -> dict:
        """A user's score of a run; a low one keeps it as a regression case."""
        await access.thread(request, thread_id, "update", {"run_id": run_id})
        return await record_feedback(service, await service.runs.get(thread_id, run_id), body)

    mount_console(api, service)
    api.add_middleware(TraceMiddleware)  # outermost: a span and x-trace-id per request
    return api


def run_location(run: dict[str, Any]) -> str:
    return f"/threads/{quote(run['thread_id'], safe='')}/runs/{run['run_id']}"


def event_id(value: str | None) -> str | None:
    """A ``Last-Event-ID`` as one of ours (a Redis Stream id, ``<ms>-<seq>`` or ``<ms>``, and
    ``.<i>`` for an event inside an entry: ``serve_app.runs.event_log``); anything else (forged,
    garbled) is refused rather than passed to Redis."""
    if value is None or value == "":
        return None
    entry, dot, index = value.partition(".")
    ms, _, seq = entry.partition("-")
    if (ms.isdigit() and len(ms) <= 20 and (not seq or (seq.isdigit() and len(seq) <= 20))
            and (not dot or (index.isdigit() and len(index) <= 6))):
        return value
    raise ApiError(422, f"Last-Event-ID {value[:64]!r} is not an event id of this stream")


def is_out_of_memory(exc: Exception) -> bool:
    """Redis refused a write: it is at its maxmemory with policy noeviction."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "used memory > 'maxmemory'" in str(exc))
