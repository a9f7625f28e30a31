"""The worker-call seam over Ray: a specialist's (or a project graph's) deployment handle as
an ``agents`` Worker, and the replica's side of the call (``serve_worker``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from agents.errors import WorkerFailed
from agents.workers import Worker

log = logging.getLogger(__name__)
REPLICA_GONE = (ActorDiedError, ActorUnavailableError, ReplicaUnavailableError,
                DeploymentUnavailableError)


class RemoteWorker:
    """Streams a specialist's events through ``handle.options(stream=True)``.

    Serve does not retry a call whose replica died; we do, because every worker request is
    idempotent: the specialist's run continues from its last checkpoint in Redis.
    """

    def __init__(self, handle: DeploymentHandle, attempts: int = 5, backoff_s: float = 1.0):
        self.handle = handle.options(stream=True)
        self.attempts = attempts
        self.backoff_s = backoff_s

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for attempt in range(1, self.attempts + 1):
            try:
                async for event in self.handle.stream.remote(request):
                    yield event
                return
            except REPLICA_GONE as exc:
                if attempt == self.attempts:
                    raise
                log.warning("%s replica lost (%s); retrying, attempt %d",
                            request.get("role"), type(exc).__name__, attempt + 1)
                yield {"type": "retry", "role": request.get("role"), "attempt": attempt + 1}
                await asyncio.sleep(self.backoff_s * attempt)


async def serve_worker(worker: Worker, name: str, request: dict[str, Any]
                       ) -> AsyncIterator[dict[str, Any]]:
    """A replica's ``stream``: the worker's token, progress and result events (see
    ``agents.workers``), its failure as ``WorkerFailed`` (library exceptions may not unpickle
    in the caller)."""
    try:
        async for event in worker.stream(request):
            yield event
    except Exception as exc:
        raise WorkerFailed(f"{name}: {type(exc).__name__}: {exc}") from None
