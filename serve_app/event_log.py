"""A run's events in its Redis Stream, appended in order without a round trip each.

``append`` returns at once; events that pile up while one pipeline is in flight go out
together in the next, so a burst of tokens costs one round trip instead of one per event,
and the graph never waits on Redis to stream its next chunk. ``flush`` waits until every
appended event is stored and raises what storing raised.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from serve_app.jsonable import dumps
from serve_app.keys import events_key


class EventWriter:
    def __init__(self, redis: Redis, run_id: str, ttl_s: int):
        self.redis = redis
        self.key = events_key(run_id)
        self.ttl_s = ttl_s
        self._pending: list[tuple[str, str]] = []
        self._flusher: asyncio.Task | None = None
        self._failure: Exception | None = None
        self._expiring = False

    def append(self, event: str, data: Any) -> None:
        """Queue one event (serialised now: ``data`` may change after this call). Raises,
        once, what storing earlier events raised; later events are tried again."""
        self._raise_failure()
        self._pending.append((event, dumps(data)))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._write())

    async def flush(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        self._raise_failure()

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def _write(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                pipe = self.redis.pipeline(transaction=False)
                for event, data in batch:
                    pipe.xadd(self.key, {"event": event, "data": data})
                if not self._expiring:
                    pipe.expire(self.key, self.ttl_s)
                await pipe.execute()
                self._expiring = True
        except Exception as exc:
            self._failure = exc
        finally:
            self._flusher = None
