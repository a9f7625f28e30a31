"""The API's own ASGI middlewares: who is calling, and which replica answered.

Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs
the route in a task of its own and copies every response message through a memory stream,
so two of them cost each SSE chunk two extra hand-offs on a loop that also runs the runs
(measured in ``bench/optimisations.md``, "Overload").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api.routes_auth import match
from serve_app.resources.api_errors import ApiError
from serve_app.resources.auth import Authorizer


class ReplicaHeader:
    """Every answer says which replica gave it (``x-replica-id``)."""

    def __init__(self, app: ASGIApp, replica_id: Callable[[], str]):
        self.app = app
        self.replica_id = replica_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = (b"x-replica-id", self.replica_id().encode("latin-1"))

        async def send_with_replica(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*(message.get("headers") or ()), header]
            await send(message)

        await self.app(scope, receive, send_with_replica)


class Authenticate:
    """Who is calling, before any route runs (public routes excepted); a route that has
    no rule is refused, so a new one cannot be open by omission. The user lands in
    ``request.state.user``; a body the auth handler read is handed on to the route."""

    def __init__(self, app: ASGIApp, api: FastAPI, authorizer: Authorizer):
        self.app = app
        self.api = api
        self.authorizer = authorizer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule, path_params, matched = match(self.api.router.routes, scope)
        if not matched:  # the router answers 404 / 405
            await self.app(scope, receive, send)
            return
        body = _Replay(receive)
        try:
            if rule is None:
                raise ApiError(403, "this route has no auth rule (serve_app/api/routes_auth.py)")
            if not rule.public:
                user = await self.authorizer.authenticate(Request(scope, body.record),
                                                          path_params)
                scope.setdefault("state", {})["user"] = user
        except ApiError as exc:
            await JSONResponse({"detail": exc.detail}, status_code=exc.status,
                               headers=exc.headers)(scope, receive, send)
            return
        except HTTPException as exc:  # the body, read for the handler, was too large
            await JSONResponse({"detail": exc.detail},
                               status_code=exc.status_code)(scope, receive, send)
            return
        await self.app(scope, body.replay, send)


class _Replay:
    """``receive`` as the auth handler consumed it (``record``), then the same messages
    again for the route (``replay``), then the rest of the stream."""

    def __init__(self, receive: Receive):
        self.receive = receive
        self.seen: list[Any] = []

    async def record(self) -> Message:
        message = await self.receive()
        self.seen.append(message)
        return message

    async def replay(self) -> Message:
        return self.seen.pop(0) if self.seen else await self.receive()
