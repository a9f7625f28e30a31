"""A run's events in its Redis Stream, appended in order without a round trip each.

``append`` returns at once; events go out in batches. Outside a burst (fewer than two
writes in the last ``linger_s``) an event goes out at once: the run's metadata, a tool's
progress, the start of a message and its first token (LangGraph streams an empty chunk
first) reach their reader without delay. Inside a burst an event opens a batch that is
sent ``linger_s`` later (or at once on ``flush``) with everything appended meanwhile, and
events that pile up while one write is in flight go out together in the next. Tokens
arrive every few milliseconds, so without the linger nearly every token was its own write
(a Lua call, its XADDs, and a wake-up of every reader of the stream); with 20 ms a research
turn's ~20 writes become a handful, for at most 20 ms more between a token inside a stream
of tokens and its reader. The graph never waits on Redis to stream its next chunk.
``flush`` waits until every appended event is stored and raises what storing raised.

A failed write is tried again (with backoff, for up to ``retry_s``) with its events kept
in order: a transient Redis error must not leave a hole in a stream that clients replay
by event id. A batch is written by one Lua call that tags its last entry; a retry is
skipped if the stream already ends with that tag, so a write that timed out but reached
Redis is not stored twice (a first attempt has nothing to check). Past ``retry_s`` the
failure is raised once and the events stay queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
import uuid
from typing import Any

from redis.asyncio import Redis

from serve_app.jsonable import dumps
from serve_app.keys import events_key

# KEYS[1]: the stream; ARGV[1]: the batch's tag; ARGV[2]: TTL in s ('' to leave it);
# ARGV[3]: '1' if an earlier attempt may have landed (check the tag); then event/data
# pairs. The tag goes on the batch's last entry.
_APPEND = """
if ARGV[3] == '1' then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if last then
    local fields = last[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'b' and fields[i + 1] == ARGV[1] then return 0 end
    end
  end
end
for i = 4, #ARGV, 2 do
  if i + 2 > #ARGV then
    redis.call('XADD', KEYS[1], '*', 'event', ARGV[i], 'data', ARGV[i + 1], 'b', ARGV[1])
  else
    redis.call('XADD', KEYS[1], '*', 'event', ARGV[i], 'data', ARGV[i + 1])
  end
end
if ARGV[2] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


LINGER_S = 0.02


class EventWriter:
    def __init__(self, redis: Redis, thread_id: str, run_id: str, ttl_s: int,
                 retry_s: float = 10.0, linger_s: float = LINGER_S):
        self.redis = redis
        self.key = events_key(thread_id, run_id)
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.linger_s = linger_s
        self._hurry = asyncio.Event()  # set while someone waits in flush
        self._pending: list[tuple[str, str]] = []
        self._flusher: asyncio.Task | None = None
        self._failure: Exception | None = None
        self._expiring = False
        self._tag = uuid.uuid4().hex[:12]
        self._batches = itertools.count()
        self._stored_at = (-math.inf, -math.inf)  # when the last two writes ended
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
            self._hurry.set()
            try:
                await asyncio.shield(self._flusher)
            finally:
                self._hurry.clear()
        self._raise_failure()

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def _write(self) -> None:
        deadline = time.monotonic() + self.retry_s
        try:
            while self._pending:
                burst = time.monotonic() - self._stored_at[0] < self.linger_s
                if burst and not self._hurry.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._hurry.wait(), self.linger_s)
                batch, self._pending = self._pending, []
                await self._store_retrying(batch, f"{self._tag}:{next(self._batches)}",
                                           deadline)
                self._stored_at = (self._stored_at[1], time.monotonic())
        except Exception as exc:
            self._failure = exc
        finally:
            self._flusher = None

    async def _store_retrying(self, batch: list[tuple[str, str]], tag: str,
                              deadline: float) -> None:
        """The same batch under the same tag until it is stored or ``deadline`` passes."""
        backoff, landed_maybe = 0.05, False
        while True:
            try:
                return await self._store(batch, tag, check=landed_maybe)
            except Exception:
                landed_maybe = True
                if time.monotonic() + backoff > deadline:
                    self._pending[:0] = batch  # kept, in order, for the next write
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _store(self, batch: list[tuple[str, str]], tag: str, check: bool) -> None:
        args = [tag, "" if self._expiring else self.ttl_s, "1" if check else "0"]
        for event, data in batch:
            args += [event, data]
        await self._append(keys=[self.key], args=args)
        self._expiring = True
