"""The runs routes (LangGraph Platform's ``/runs`` and ``/threads/{thread_id}/runs``): a
new run takes the one road (``serve_app.resources.run_road``), whatever the route; a run's
reads, joins, streams, cancels and deletes are checked on its thread (``Access``). On the app
itself, as ``serve_app.api.routes_store`` explains; no postponed annotations, as
``routes_threads`` explains."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Depends, FastAPI, Header, Query
from fastapi.responses import JSONResponse, StreamingResponse

from serve_app.api.access import Access, Caller
from serve_app.resources.api_errors import ApiError
from serve_app.resources.auth import User
from serve_app.resources.run_road import RunRequest, RunRoad
from serve_app.resources.runs import joined_modes
from serve_app.resources.schemas import RunBatchItem, RunCancelMany, RunCreate
from serve_app.runs.records import RunStatus
from serve_app.runs.regressions import RunFeedback, record_feedback

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def run_location(run: dict[str, Any]) -> str:
    return f"/threads/{quote(run['thread_id'], safe='')}/runs/{run['run_id']}"


def sse(run: dict[str, Any], frames: AsyncIterator[bytes]) -> StreamingResponse:
    """A run's events; ``Location`` is where a cut-off client rejoins them."""
    location = run_location(run)
    return StreamingResponse(frames, media_type="text/event-stream", headers={
        **SSE_HEADERS, "Location": f"{location}/stream", "Content-Location": location})


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


def background(body: RunCreate) -> RunCreate:
    """A run nobody waits on has no client to lose: ``on_disconnect: cancel`` is refused
    rather than ignored."""
    if body.on_disconnect == "cancel":
        raise ApiError(422, "on_disconnect: 'cancel' applies to runs.stream and runs.wait; "
                            "a created run has no connection to lose")
    return body


def created(run: dict[str, Any]) -> JSONResponse:
    return JSONResponse(run, headers={"Content-Location": run_location(run)})


def add_run_routes(api: FastAPI, access: Access, road: RunRoad) -> None:
    service = access.service
    runs, streams = service.runs, service.streams

    def start(user: User, thread_id: str | None, body: RunCreate,
              admitted: bool = False) -> Any:
        return road.start(RunRequest(user=user, thread_id=thread_id, body=body,
                                     admitted=admitted))

    def events(run: dict[str, Any], cancel_on_disconnect: bool, last_id: str = "0",
               modes: frozenset[str] | None = None) -> AsyncIterator[bytes]:
        follow = streams.events_or_cancel if cancel_on_disconnect else streams.events
        return follow(run["thread_id"], run["run_id"], last_id, modes)

    def streamed(run: dict[str, Any], body: RunCreate) -> StreamingResponse:
        return sse(run, events(run, body.on_disconnect == "cancel"))

    async def waited(run: dict[str, Any], body: RunCreate) -> JSONResponse:
        """The run's output; ``Location`` is its join, where a cut-off client reconnects.
        A client that goes first cancels the run if it asked to (``on_disconnect``)."""
        location = run_location(run)
        try:
            output = await runs.join(run["thread_id"], run["run_id"])
        except asyncio.CancelledError:
            if body.on_disconnect == "cancel":
                await asyncio.shield(streams.cancel_unless_ended(run["thread_id"],
                                                                 run["run_id"]))
            raise
        return JSONResponse(output, headers={"Location": f"{location}/join",
                                             "Content-Location": location})

    async def run_of(user: Caller, thread_id: str, run_id: str) -> dict[str, Any]:
        """The run the path names, if the user may read its thread (else 404)."""
        await access.thread(user, thread_id, "read", {"run_id": run_id})
        return await runs.get(thread_id, run_id)

    Run = Annotated[dict[str, Any], Depends(run_of)]

    @api.post("/threads/{thread_id}/runs")
    async def create_run(user: Caller, thread_id: str, body: RunCreate) -> JSONResponse:
        return created(await start(user, thread_id, background(body)))

    @api.post("/runs")
    async def create_stateless_run(user: Caller, body: RunCreate) -> JSONResponse:
        return created(await start(user, None, background(body)))

    @api.post("/threads/{thread_id}/runs/stream")
    async def stream_run(user: Caller, thread_id: str, body: RunCreate) -> StreamingResponse:
        return streamed(await start(user, thread_id, body), body)

    @api.post("/runs/stream")
    async def stream_stateless_run(user: Caller, body: RunCreate) -> StreamingResponse:
        return streamed(await start(user, None, body), body)

    @api.post("/threads/{thread_id}/runs/wait")
    async def wait_run(user: Caller, thread_id: str, body: RunCreate) -> JSONResponse:
        return await waited(await start(user, thread_id, body), body)

    @api.post("/runs/wait")
    async def wait_stateless_run(user: Caller, body: RunCreate) -> JSONResponse:
        return await waited(await start(user, None, body), body)

    @api.post("/runs/batch")
    async def create_batch(user: Caller, body: list[RunBatchItem]) -> list[dict]:
        """Several runs at once, each as ``runs.create`` would make it; admitted as a
        whole (a body that fails validation makes none)."""
        await runs.admit()
        made = []
        for item in body:
            run = RunCreate(**item.model_dump(exclude={"thread_id"}, exclude_unset=True))
            made.append(await start(user, item.thread_id, background(run), admitted=True))
        return made

    @api.post("/runs/cancel", status_code=204)
    async def cancel_many(user: Caller, body: RunCancelMany,
                          action: Literal["interrupt", "rollback"] = "interrupt") -> None:
        if body.thread_id is None:
            raise ApiError(422, "thread_id: cancelling runs across every thread is not "
                                "supported; name the thread")
        await access.thread(user, body.thread_id, "update", {"action": action})
        await runs.cancel_many(body.thread_id, body.run_ids, body.status, action)

    @api.get("/threads/{thread_id}/runs")
    async def list_runs(user: Caller, thread_id: str,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 10,
                        offset: Annotated[int, Query(ge=0)] = 0,
                        status: RunStatus | None = None,
                        select: Annotated[list[str] | None, Query()] = None) -> list[dict]:
        await access.thread(user, thread_id)
        found = await service.records.list_runs(thread_id, limit, offset, status)
        return [{k: r.get(k) for k in select} for r in found] if select else found

    @api.get("/threads/{thread_id}/runs/{run_id}")
    async def get_run(run: Run) -> dict:
        return run

    @api.delete("/threads/{thread_id}/runs/{run_id}", status_code=204)
    async def delete_run(user: Caller, thread_id: str, run_id: str) -> None:
        await access.thread(user, thread_id, "delete", {"run_id": run_id})
        await runs.delete(thread_id, run_id)

    @api.get("/threads/{thread_id}/runs/{run_id}/join")
    async def join_run(run: Run) -> dict:
        return await runs.join(run["thread_id"], run["run_id"])

    @api.get("/threads/{thread_id}/runs/{run_id}/stream")
    async def join_stream(
        run: Run,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        cancel_on_disconnect: bool = False,
        stream_mode: Annotated[list[str] | None, Query()] = None,
    ) -> StreamingResponse:
        """Join a run's stream from any replica, resuming after ``Last-Event-ID``; with
        ``stream_mode``, only those of the run's modes."""
        return sse(run, events(run, cancel_on_disconnect, event_id(last_event_id) or "0",
                               joined_modes(run, stream_mode)))

    @api.post("/threads/{thread_id}/runs/{run_id}/cancel", status_code=202)
    async def cancel_run(user: Caller, thread_id: str, run_id: str, wait: bool = False,
                         action: str = "interrupt") -> None:
        if action not in ("interrupt", "rollback"):
            raise ApiError(422, "action must be 'interrupt' or 'rollback'")
        await access.thread(user, thread_id, "update", {"run_id": run_id, "action": action})
        await runs.cancel(thread_id, run_id, wait, action)

    @api.post("/threads/{thread_id}/runs/{run_id}/feedback")
    async def run_feedback(user: Caller, thread_id: str, run_id: str,
                           body: RunFeedback) -> dict:
        """A user's score of a run; a low one keeps it as a regression case."""
        await access.thread(user, thread_id, "update", {"run_id": run_id})
        return await record_feedback(service, await runs.get(thread_id, run_id), body)
