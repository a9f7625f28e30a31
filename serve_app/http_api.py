"""The HTTP API: LangGraph Platform's routes (so ``langgraph_sdk`` works unchanged) plus the
seed's ``/api/chat`` and ``/api/approve``. Thin: every route delegates to ``AgentService``."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from serve_app.console import mount_console
from serve_app.schemas import (
    ApproveRequest,
    AssistantSearch,
    ChatRequest,
    HistoryQuery,
    RunCreate,
    StateAt,
    StateUpdate,
    ThreadCreate,
    ThreadPatch,
    ThreadPrune,
    ThreadSearch,
)
from serve_app.service import DEFAULT_GRAPH, AgentService, ApiError

log = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def build_api(service: AgentService) -> FastAPI:
    api = FastAPI(title="Agent Cluster", version="0.1.0")

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

    @api.middleware("http")
    async def replica_header(request: Request, call_next):
        response = await call_next(request)
        response.headers["x-replica-id"] = service.replica_id
        return response

    def sse(run: dict[str, Any], frames: AsyncIterator[bytes]) -> StreamingResponse:
        location = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
        return StreamingResponse(frames, media_type="text/event-stream", headers={
            **SSE_HEADERS, "Location": f"{location}/stream", "Content-Location": location})

    # health and identity
    @api.get("/ok")
    async def ok() -> dict:
        return {"ok": True}

    @api.get("/info")
    async def info() -> dict:
        return {"version": "0.1.0", "flags": {"assistants": True, "crons": False}}

    @api.get("/metrics")
    async def metrics() -> PlainTextResponse:
        """This replica's run metrics in Prometheus' text format."""
        return PlainTextResponse(service.metrics.prometheus(replica=service.replica_id),
                                 media_type="text/plain; version=0.0.4")

    @api.get("/whoami")
    async def whoami() -> dict:
        return {"replica_id": service.replica_id, "pid": os.getpid()}

    # assistants
    @api.post("/assistants/search")
    async def search_assistants(body: AssistantSearch) -> list[dict]:
        found = [a for a in service.assistants()
                 if body.graph_id in (None, a["graph_id"])]
        return found[body.offset:body.offset + body.limit]

    @api.get("/assistants/{assistant_id}")
    async def get_assistant(assistant_id: str) -> dict:
        return service.get_assistant(assistant_id)

    @api.get("/assistants/{assistant_id}/graph")
    async def get_graph(assistant_id: str, xray: bool | int = False) -> dict:
        return service.graph_drawing(assistant_id, xray)

    @api.get("/assistants/{assistant_id}/schemas")
    async def get_schemas(assistant_id: str) -> dict:
        return service.schemas(assistant_id)

    # threads
    @api.post("/threads")
    async def create_thread(body: ThreadCreate) -> dict:
        return await service.create_thread(body.thread_id, body.metadata, body.ttl,
                                           body.if_exists)

    @api.post("/threads/prune")
    async def prune_threads(body: ThreadPrune) -> dict:
        return await service.prune_threads(body.thread_ids, body.strategy)

    @api.post("/threads/search")
    async def search_threads(body: ThreadSearch) -> list[dict]:
        return await service.search_threads(body)

    @api.get("/threads/{thread_id}")
    async def get_thread(thread_id: str) -> dict:
        return await service.thread_view(await service.require_thread(thread_id))

    @api.patch("/threads/{thread_id}")
    async def patch_thread(thread_id: str, body: ThreadPatch) -> dict:
        return await service.update_thread(thread_id, body.metadata, body.ttl)

    @api.delete("/threads/{thread_id}", status_code=204)
    async def delete_thread(thread_id: str) -> None:
        await service.delete_thread(thread_id)

    @api.get("/threads/{thread_id}/state")
    async def get_state(thread_id: str) -> dict:
        return await service.get_state(thread_id)

    @api.get("/threads/{thread_id}/state/{checkpoint_id}")
    async def get_state_at(thread_id: str, checkpoint_id: str) -> dict:
        return await service.get_state(thread_id, checkpoint_id)

    @api.post("/threads/{thread_id}/state/checkpoint")
    async def post_state_at(thread_id: str, body: StateAt) -> dict:
        return await service.get_state(thread_id, body.checkpoint.checkpoint_id)

    @api.post("/threads/{thread_id}/state")
    async def update_state(thread_id: str, body: StateUpdate) -> dict:
        return await service.update_state(thread_id, body.values, body.as_node, body.target)

    @api.post("/threads/{thread_id}/history")
    async def history(thread_id: str, body: HistoryQuery) -> list[dict]:
        return await service.history(thread_id, body.limit, body.before, body.metadata)

    # runs on a thread, and thread-less runs
    @api.post("/threads/{thread_id}/runs")
    async def create_run(thread_id: str, body: RunCreate) -> JSONResponse:
        run = await service.create_run(thread_id, body)
        location = f"/threads/{thread_id}/runs/{run['run_id']}"
        return JSONResponse(run, headers={"Content-Location": location})

    @api.post("/runs")
    async def create_stateless_run(body: RunCreate) -> dict:
        return await service.create_run(None, body)

    @api.post("/threads/{thread_id}/runs/stream")
    async def stream_run(thread_id: str, body: RunCreate) -> StreamingResponse:
        run = await service.create_run(thread_id, body)
        return sse(run, service.stream_events(thread_id, run["run_id"]))

    @api.post("/runs/stream")
    async def stream_stateless_run(body: RunCreate) -> StreamingResponse:
        run = await service.create_run(None, body)
        return sse(run, service.stream_events(run["thread_id"], run["run_id"]))

    @api.post("/threads/{thread_id}/runs/wait")
    async def wait_run(thread_id: str, body: RunCreate) -> dict:
        run = await service.create_run(thread_id, body)
        return await service.run_output(await service.wait_for_end(thread_id, run["run_id"]))

    @api.post("/runs/wait")
    async def wait_stateless_run(body: RunCreate) -> dict:
        run = await service.create_run(None, body)
        return await service.run_output(
            await service.wait_for_end(run["thread_id"], run["run_id"]))

    @api.get("/threads/{thread_id}/runs")
    async def list_runs(thread_id: str, limit: int = 10, offset: int = 0) -> list[dict]:
        await service.require_thread(thread_id)
        return await service.records.list_runs(thread_id, limit, offset)

    @api.get("/threads/{thread_id}/runs/{run_id}")
    async def get_run(thread_id: str, run_id: str) -> dict:
        return await service.get_run(thread_id, run_id)

    @api.delete("/threads/{thread_id}/runs/{run_id}", status_code=204)
    async def delete_run(thread_id: str, run_id: str) -> None:
        await service.delete_run(thread_id, run_id)

    @api.get("/threads/{thread_id}/runs/{run_id}/join")
    async def join_run(thread_id: str, run_id: str) -> dict:
        await service.get_run(thread_id, run_id)
        return await service.run_output(await service.wait_for_end(thread_id, run_id))

    @api.get("/threads/{thread_id}/runs/{run_id}/stream")
    async def join_stream(
        thread_id: str, run_id: str,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        """Join a run's stream from any replica, resuming after ``Last-Event-ID``."""
        run = await service.get_run(thread_id, run_id)
        return sse(run, service.stream_events(thread_id, run_id, last_event_id or "0"))

    @api.post("/threads/{thread_id}/runs/{run_id}/cancel", status_code=202)
    async def cancel_run(thread_id: str, run_id: str, wait: bool = False,
                         action: str = "interrupt") -> None:
        if action not in ("interrupt", "rollback"):
            raise ApiError(422, "action must be 'interrupt' or 'rollback'")
        await service.cancel_run(thread_id, run_id, wait, action)

    # the seed's simple chat endpoints
    @api.post("/api/chat")
    async def chat(body: ChatRequest):
        run_body = RunCreate(assistant_id=DEFAULT_GRAPH, if_not_exists="create", stream_mode=[],
                             input={"messages": [{"role": "user", "content": body.message}]})
        run = await service.create_run(body.thread_id, run_body, extra_modes=["chat"])
        return await chat_response(run, body.stream)

    @api.post("/api/approve")
    async def approve(body: ApproveRequest):
        await service.require_thread(body.thread_id)
        if not await service.pending_approvals(body.thread_id):
            raise ApiError(409, f"thread {body.thread_id!r} has no pending approval")
        decision = body.model_dump(include={"action", "args", "by", "reason"}, exclude_none=True)
        resume = {body.interrupt_id: decision} if body.interrupt_id else decision
        run_body = RunCreate(assistant_id=DEFAULT_GRAPH, stream_mode=[],
                             command={"resume": resume})
        run = await service.create_run(body.thread_id, run_body, extra_modes=["chat"])
        return await chat_response(run, body.stream)

    async def chat_response(run: dict[str, Any], stream: bool):
        if stream:
            return sse(run, service.stream_events(run["thread_id"], run["run_id"]))
        run = await service.wait_for_end(run["thread_id"], run["run_id"])
        output = await service.run_output(run)
        base = {"thread_id": run["thread_id"], "run_id": run["run_id"]}
        if "__error__" in output:
            return JSONResponse({**base, "status": "error", "error": output["__error__"]},
                                status_code=500)
        if "__interrupt__" in output:
            approvals = await service.pending_approvals(run["thread_id"])
            return JSONResponse({**base, "status": "awaiting_approval", "approvals": approvals},
                                status_code=202)
        messages = output.get("messages") or []
        answer = messages[-1].get("content", "") if messages else ""
        return {**base, "status": "done", "answer": answer}

    mount_console(api, service)
    return api


def is_out_of_memory(exc: Exception) -> bool:
    """Redis refused a write: it is at its maxmemory with policy noeviction."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "used memory > 'maxmemory'" in str(exc))
