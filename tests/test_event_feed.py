"""The event feed: one blocking read for every SSE reader of a process, against real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from agents.checkpoint import create_redis
from agents.settings import RedisSettings
from serve_app.runs.event_feed import EventFeed


@pytest.fixture
async def small_pool(redis_url):
    """Four connections, one second to get one: what idle readers must not exhaust."""
    client = create_redis(redis_url, RedisSettings(pool_size=4, pool_timeout_s=1))
    yield client
    await client.aclose()


@pytest.fixture
async def feed(small_pool):
    built = EventFeed(small_pool, block_ms=2000)
    yield built
    await built.aclose()


def stream() -> str:
    return f"test:feed:{uuid.uuid4().hex[:8]}"


async def collect(feed: EventFeed, key: str, last_id: str, want: int,
                  timeout_s: float = 5.0) -> list[bytes]:
    """The ids of the first ``want`` entries after ``last_id``."""
    ids: list[bytes] = []
    batches = feed.follow(key, last_id, idle_s=0.2)
    async with contextlib.aclosing(batches):
        deadline = time.monotonic() + timeout_s
        async for batch in batches:
            ids += [entry_id for entry_id, _ in batch or []]
            if len(ids) >= want or time.monotonic() > deadline:
                return ids
    return ids


async def test_many_waiting_readers_leave_the_pool_to_writers(feed, small_pool):
    keys = [stream() for _ in range(40)]  # ten times the pool
    readers = [asyncio.create_task(collect(feed, key, "0", want=1)) for key in keys]
    await asyncio.sleep(0.3)  # every reader is waiting now

    started = time.monotonic()
    for key in keys:  # each write needs a pooled connection
        await small_pool.xadd(key, {"event": "token"})
    results = await asyncio.gather(*readers)

    assert time.monotonic() - started < 2.0
    assert all(len(ids) == 1 for ids in results)


async def test_readers_of_one_stream_each_get_what_follows_their_own_id(feed, small_pool):
    key = stream()
    first = [await small_pool.xadd(key, {"n": str(i)}) for i in range(3)]
    from_start = asyncio.create_task(collect(feed, key, "0", want=6))
    from_second = asyncio.create_task(collect(feed, key, first[1].decode(), want=4))
    await asyncio.sleep(0.1)
    later = [await small_pool.xadd(key, {"n": str(i)}) for i in range(3, 6)]

    assert await from_start == first + later
    assert await from_second == first[2:] + later


async def test_a_new_reader_is_served_at_once_while_the_feed_blocks(feed, small_pool):
    idle = asyncio.create_task(collect(feed, stream(), "0", want=1, timeout_s=3))
    await asyncio.sleep(0.2)  # the feed is now blocked on the idle stream alone
    key = stream()
    reader = asyncio.create_task(collect(feed, key, "0", want=1))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await small_pool.xadd(key, {"event": "token"})
    assert len(await reader) == 1
    assert time.monotonic() - started < 1.0  # not the feed's 2 s block (half of it to spare)
    idle.cancel()

