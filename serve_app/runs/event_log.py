"""A run's events in its Redis Stream, appended in order without a round trip each.

``append`` returns at once; events go out in batches. Each write is an ``XADD`` and a
wake-up of every reader of the stream (one ``XREAD`` each): before batching, most of a
run's Redis commands. An event appended within ``linger_s`` of the stream's last write
opens a batch sent ``linger_s`` later (or at once on ``flush``) with everything appended
meanwhile; after a quiet spell an event waits only ``QUIET_S`` (10 ms: the start of a
message and its first token, a tool's progress after a model call: LangGraph streams a
message's empty first chunk and its next ones milliseconds apart, so they share a write
for ~10 ms on the time to first token). Events that pile up while a write is in flight
go out together in the next. A new stream starts as if just written: the run's metadata
waits for its input's state report and both go in one write. A specialist's tokens reach
the log every ``token_linger_ms`` (40 ms) already merged, so a linger shorter than that
batched nothing; 50 ms took a research turn's ~18 writes to ~10, 100 ms (the default) to
~8 (measured in BENCHMARKS.md's optimisation log), for at most 100 ms more between an
event inside a burst and its reader: a streamed answer still updates ~10 times a second,
and its first token does not wait. The graph never waits on Redis to stream its next
chunk. ``flush`` waits until every appended event is stored and raises what storing
raised. A run's last events wait for its end (``hold``): one write (and one reader
wake-up) for both, not one each; but a run over within its first write's linger stores
that first (``started``), or retention's grace expiry would find no stream and the first
write's TTL (an hour) would keep it.

A failed write is tried again (with backoff, for up to ``retry_s``) with its events kept
in order: a transient Redis error must not leave a hole in a stream that clients replay
by event id. Each entry carries its batch's tag; a retry is one Lua call that skips the
write if the stream already ends with that tag, so a write that timed out but reached
Redis is not stored twice (a first attempt has nothing to check: a plain ``XADD``).
Past ``retry_s`` the failure is raised once and the events stay queued.

A batch is one stream entry (``event``/``data`` for its first event, ``event1``/``data1``
and so on for the rest): one ``XADD`` per batch, not one per event, and one wake-up of its
readers. An event's id is its entry's id for an entry's last event and ``<entry id>.<i>``
for the ``i``-th before it, so a ``Last-Event-ID`` still names one event and a resumed
stream starts right after it (``resume_point``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from typing import Any

from redis.asyncio import Redis

from serve_app.keys import events_key
from serve_app.runs.jsonable import dumps

# KEYS[1]: the stream; ARGV[1]: the batch's tag; then the entry's fields and values (the
# tag among them). Stores the entry unless the stream already ends with that tag.
_APPEND_ONCE = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then
  local fields = last[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'b' and fields[i + 1] == ARGV[1] then return 0 end
  end
end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
return 1
"""

MAX_BATCH = 1000  # events per entry: Lua's unpack takes a few thousand values at most
LINGER_S = 0.1
QUIET_S = 0.01  # an event after a quiet spell waits this long for company
HELD_S = 1.0  # what is pending while the writer is held waits at most this long


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
        self._held = False
        self._tag = uuid.uuid4().hex[:12]
        self._batches = itertools.count()
        self._stored_at = time.monotonic()  # when the last write ended (a new stream: now)
        self._append_once = redis.register_script(_APPEND_ONCE)

    def append(self, event: str, data: Any) -> None:
        """Queue one event (serialised now: ``data`` may change after this call). Raises,
        once, what storing earlier events raised; later events are tried again."""
        self._raise_failure()
        self._pending.append((event, dumps(data)))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._write())

    @property
    def started(self) -> bool:
        """Its stream exists: a write has been stored (and set the stream's TTL)."""
        return self._expiring

    def hold(self) -> None:
        """Until the next ``flush``, pending events wait for it (up to ``HELD_S``) instead
        of their linger: a run's last state goes in one write with its end, not one each
        (the end comes a few round trips later, after a quiet spell's 10 ms)."""
        self._held = True

    async def flush(self) -> None:
        self._held = False
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
                await self._linger()
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._store_retrying(batch, f"{self._tag}:{next(self._batches)}",
                                           deadline)
                self._stored_at = time.monotonic()
        except Exception as exc:
            self._failure = exc
        finally:
            self._flusher = None

    async def _linger(self) -> None:
        """Wait for company until the linger (or ``QUIET_S``) is over or a flush hurries
        the write; while held, for the flush (up to ``HELD_S``)."""
        start = time.monotonic()
        burst = start - self._stored_at < self.linger_s
        linger_s = self.linger_s if burst else min(QUIET_S, self.linger_s)
        while not self._hurry.is_set():
            left = start + (HELD_S if self._held else linger_s) - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), left)

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
        fields: list[str] = []
        for index, (event, data) in enumerate(batch):
            suffix = str(index) if index else ""
            fields += [f"event{suffix}", event, f"data{suffix}", data]
        fields += ["b", tag]
        pipe = self.redis.pipeline(transaction=False)
        if check:
            await self._append_once(keys=[self.key], args=[tag, *fields], client=pipe)
        else:
            pipe.execute_command("XADD", self.key, "*", *fields)
        if not self._expiring:
            pipe.expire(self.key, self.ttl_s)
        await pipe.execute()
        self._expiring = True


def entry_events(entry_id: bytes, fields: dict[bytes, bytes]
                 ) -> list[tuple[bytes, bytes, bytes]]:
    """An entry's events as (event id, event, data), in order (``EventWriter``'s layout)."""
    events = []
    for index in itertools.count():
        suffix = b"%d" % index if index else b""
        event = fields.get(b"event" + suffix)
        if event is None:
            break
        events.append((event, fields[b"data" + suffix]))
    last = len(events) - 1
    return [(entry_id if index == last else b"%s.%d" % (entry_id, index), event, data)
            for index, (event, data) in enumerate(events)]


def resume_point(last_event_id: str) -> tuple[str, str | None, int]:
    """Where a stream resumes after event ``last_event_id``: the entry id to read after,
    and, if that event was not its entry's last, the entry to read again and how many of
    its events the reader has already seen."""
    entry, _, index = last_event_id.partition(".")
    if not index:
        return entry, None, 0
    ms, _, seq = entry.partition("-")
    before = f"{ms}-{int(seq) - 1}" if int(seq or 0) else f"{max(int(ms) - 1, 0)}-{2**64 - 1}"
    return before, entry, int(index) + 1
