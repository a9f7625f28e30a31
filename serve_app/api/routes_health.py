"""Health and identity: ``/ok`` and ``/info`` (public), this replica's ``/metrics`` and
``/whoami``."""

from __future__ import annotations

import os

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from serve_app.resources.service import AgentService

VERSION = "0.1.0"


def add_health_routes(api: FastAPI, service: AgentService) -> None:
    @api.get("/ok")
    async def ok() -> dict:
        return {"ok": True}

    @api.get("/info")
    async def info() -> dict:
        return {"version": VERSION, "flags": {"assistants": True, "crons": True}}

    @api.get("/metrics")
    async def metrics() -> PlainTextResponse:
        """This replica's run metrics in Prometheus' text format."""
        return PlainTextResponse(service.metrics.prometheus(replica=service.replica_id),
                                 media_type="text/plain; version=0.0.4")

    @api.get("/whoami")
    async def whoami() -> dict:
        return {"replica_id": service.replica_id, "pid": os.getpid()}
