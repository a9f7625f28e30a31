"""The worker-call seam over Ray: a specialist deployment's handle as an ``agents`` Worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray.serve.handle import DeploymentHandle


class RemoteWorker:
    """Streams a specialist's events through ``handle.options(stream=True)``."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle.options(stream=True)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async for event in self.handle.stream.remote(request):
            yield event
