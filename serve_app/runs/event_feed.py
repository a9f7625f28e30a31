"""One blocking XREAD per process for every SSE reader in it.

A blocking XREAD holds its connection until an entry arrives. One per reader would let a
few dozen clients waiting on slow runs take every connection of the pool that checkpoint
writes need, and stall the very runs they wait for. The feed reads every followed stream
with one XREAD on one connection and hands each reader its entries. A new reader adds an
entry to the feed's own wake stream, which the pending XREAD also watches: it returns at
once and the next one covers the new stream (no race, since the wake stream is read from
the last id the feed saw, not from ``$``).

On a Redis Cluster one XREAD cannot span hash slots (each thread has its own), so each reader
blocks on its own stream, on a connection of the feed's own client: readers still never
hold a connection of the pool that checkpoint writes need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.asyncio import Redis, RedisCluster

from agents.checkpoint import connection_kwargs, dedicated_client
from serve_app.keys import feed_wake_key

log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]
StreamId = tuple[int, int]
WAKE_TTL_MS = 3_600_000  # the wake stream of a process that died goes away on its own


def parse_id(stream_id: bytes | str) -> StreamId:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


@dataclass(eq=False)
class _Reader:
    last_id: StreamId
    queue: asyncio.Queue[list[Entry]] = field(default_factory=asyncio.Queue)


class EventFeed:
    def __init__(self, redis: Redis, block_ms: int = 2000, count: int = 200):
        self.redis = redis
        socket_timeout = connection_kwargs(redis).get("socket_timeout")
        # An idle read must end well before the socket would time out on it.
        self.block_ms = min(block_ms, int(socket_timeout * 500)) if socket_timeout else block_ms
        self.count = count
        self.wake_key = feed_wake_key(uuid.uuid4().hex)
        self._wake_seen: StreamId = (0, 0)
        self._readers: defaultdict[str, set[_Reader]] = defaultdict(set)
        self._task: asyncio.Task | None = None
        self._closing = False
        self._conn: Redis | None = None

    async def follow(self, key: str, last_id: str = "0",
                     idle_s: float = 5.0) -> AsyncIterator[list[Entry] | None]:
        """Batches of ``key``'s entries after ``last_id`` as they arrive; ``None`` after
        ``idle_s`` without any (time for a heartbeat or a look at the run)."""
        if isinstance(self.redis, RedisCluster):
            async for batch in self._follow_alone(key, parse_id(last_id), idle_s):
                yield batch
            return
        reader = _Reader(parse_id(last_id))
        self._readers[key].add(reader)
        try:
            self._start()
            await self._wake()
            while True:
                try:
                    yield await asyncio.wait_for(reader.queue.get(), idle_s)
                except TimeoutError:
                    yield None
        finally:
            readers = self._readers.get(key)
            if readers is not None:
                readers.discard(reader)
                if not readers:
                    del self._readers[key]

    async def _follow_alone(self, key: str, last: StreamId,
                            idle_s: float) -> AsyncIterator[list[Entry] | None]:
        self._conn = self._conn or dedicated_client(self.redis)
        quiet_since = time.monotonic()
        while not self._closing:
            try:
                reply = await self._conn.xread({key: format_id(last)}, count=self.count,
                                               block=min(self.block_ms, int(idle_s * 1000)))
            except Exception as exc:  # a failover: the reader waits, the feed retries
                log.warning("event feed: XREAD failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
                reply = None
            entries = reply[0][1] if reply else []
            if entries:
                last = parse_id(entries[-1][0])
                quiet_since = time.monotonic()
                yield entries
            elif time.monotonic() - quiet_since >= idle_s:
                quiet_since = time.monotonic()
                yield None

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            # redis-py does not interrupt a blocked read on cancel; a wake entry ends it.
            with contextlib.suppress(Exception):
                await self._wake()
            with contextlib.suppress(TimeoutError):  # then wait_for cancels it
                await asyncio.wait_for(self._task, self.block_ms / 1000 + 1)
        if self._conn is not None:
            await self._conn.aclose()
        with contextlib.suppress(Exception):
            await self.redis.delete(self.wake_key)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            # One connection of the shared pool, held for the feed's blocking reads.
            self._conn = self._conn or dedicated_client(self.redis)
            self._task = asyncio.create_task(self._read_forever())

    async def _wake(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
            pipe.pexpire(self.wake_key, WAKE_TTL_MS)
            await pipe.execute()

    async def _read_forever(self) -> None:
        while not self._closing:
            streams = {self.wake_key: format_id(self._wake_seen)}
            for key, readers in self._readers.items():
                streams[key] = format_id(min(r.last_id for r in readers))
            try:
                reply = await self._conn.xread(streams, block=self.block_ms, count=self.count)
            except Exception as exc:  # Redis restarting: readers wait, the feed retries
                log.warning("event feed: XREAD failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            for raw_key, entries in reply or []:
                key = raw_key.decode()
                if key == self.wake_key:
                    self._wake_seen = parse_id(entries[-1][0])
                    continue
                for reader in self._readers.get(key, ()):
                    fresh = [e for e in entries if parse_id(e[0]) > reader.last_id]
                    if fresh:
                        reader.last_id = parse_id(fresh[-1][0])
                        reader.queue.put_nowait(fresh)
