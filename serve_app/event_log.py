"""A run's events in its Redis Stream, appended in order without a round trip each.

``append`` returns at once; events that pile up while one pipeline is in flight go out
together in the next, so a burst of tokens costs one round trip instead of one per event,
and the graph never waits on Redis to stream its next chunk. ``flush`` waits until every
appended event is stored and raises what storing raised.

A failed write is tried again (with backoff, for up to ``retry_s``) with its events kept
in order: a transient Redis error must not leave a hole in a stream that clients replay
by event id. A batch is written by one Lua call that tags its last entry, and skipped if
the stream already ends with that tag: a write that timed out but reached Redis is not
stored twice when tried again. Past ``retry_s`` the failure is raised once and the events
stay queued.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

from redis.asyncio import Redis

from serve_app.jsonable import dumps
from serve_app.keys import events_key

# KEYS[1]: the stream; ARGV[1]: the batch's tag; ARGV[2]: TTL in s ('' to leave it);
# then event/data pairs. The tag goes on the batch's last entry.
_APPEND = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then
  local fields = last[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'b' and fields[i + 1] == ARGV[1] then return 0 end
  end
end
for i = 3, #ARGV, 2 do
  if i + 2 > #ARGV then
    redis.call('XADD', KEYS[1], '*', 'event', ARGV[i], 'data', ARGV[i + 1], 'b', ARGV[1])
  else
    redis.call('XADD', KEYS[1], '*', 'event', ARGV[i], 'data', ARGV[i + 1])
  end
end
if ARGV[2] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class EventWriter:
    def __init__(self, redis: Redis, thread_id: str, run_id: str, ttl_s: int,
                 retry_s: float = 10.0):
        self.redis = redis
        self.key = events_key(thread_id, run_id)
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self._pending: list[tuple[str, str]] = []
        self._flusher: asyncio.Task | None = None
        self._failure: Exception | None = None
        self._expiring = False
        self._tag = uuid.uuid4().hex[:12]
        self._batches = itertools.count()
        self._append = redis.register_script(_APPEND)

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
        deadline = time.monotonic() + self.retry_s
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._store_retrying(batch, f"{self._tag}:{next(self._batches)}",
                                           deadline)
        except Exception as exc:
            self._failure = exc
        finally:
            self._flusher = None

    async def _store_retrying(self, batch: list[tuple[str, str]], tag: str,
                              deadline: float) -> None:
        """The same batch under the same tag until it is stored or ``deadline`` passes."""
        backoff = 0.05
        while True:
            try:
                return await self._store(batch, tag)
            except Exception:
                if time.monotonic() + backoff > deadline:
                    self._pending[:0] = batch  # kept, in order, for the next write
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _store(self, batch: list[tuple[str, str]], tag: str) -> None:
        args = [tag, "" if self._expiring else self.ttl_s]
        for event, data in batch:
            args += [event, data]
        await self._append(keys=[self.key], args=args)
        self._expiring = True
