"""The seed's simple endpoints: ``/api/chat`` (a message in, the answer or the approvals it
waits on out) and ``/api/approve`` (decide a pending approval): runs on a thread of the
default graph, on the one road like any other (``serve_app.resources.run_road``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from serve_app.api.access import Access, Caller
from serve_app.api.routes_runs import sse
from serve_app.resources.api_errors import ApiError
from serve_app.resources.assistants import DEFAULT_GRAPH
from serve_app.resources.run_road import RunRequest, RunRoad
from serve_app.resources.schemas import ApproveRequest, ChatRequest, RunCreate

CHAT_MODES = ("chat",)


def add_chat_routes(api: FastAPI, access: Access, road: RunRoad) -> None:
    service = access.service

    async def answer(run: dict[str, Any], stream: bool):
        """The run's events, or once it ended: its answer (200), the approvals it waits
        on (202) or its error (500)."""
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
        text = messages[-1].get("content", "") if messages else ""
        return {**base, "status": "done", "answer": text}

    @api.post("/api/chat")
    async def chat(user: Caller, body: ChatRequest):
        run = await road.start(RunRequest(
            user=user, thread_id=body.thread_id, extra_modes=CHAT_MODES,
            body=RunCreate(assistant_id=DEFAULT_GRAPH, if_not_exists="create", stream_mode=[],
                           input={"messages": [{"role": "user", "content": body.message}]})))
        return await answer(run, body.stream)

    @api.post("/api/approve")
    async def approve(user: Caller, body: ApproveRequest):
        """Decide a pending approval; it needs the approver permission, and the decision
        records the authenticated identity (a body's ``by`` counts only without auth)."""
        thread, _ = await access.visible(user, body.thread_id, "create_run")
        if not await access.approvals.pending(thread):
            raise ApiError(409, f"thread {body.thread_id!r} has no pending approval")
        decision = body.model_dump(include={"action", "args", "by", "reason"}, exclude_none=True)
        resume = {body.interrupt_id: decision} if body.interrupt_id else decision
        run = await road.start(RunRequest(
            user=user, thread_id=body.thread_id, extra_modes=CHAT_MODES,
            body=RunCreate(assistant_id=DEFAULT_GRAPH, stream_mode=[],
                           command={"resume": resume})))
        return await answer(run, body.stream)
