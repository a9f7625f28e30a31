"""A run's event log: appended without waiting, stored in order, failures surfaced once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from agents.local.process import free_port
from serve_app.keys import events_key
from serve_app.runs.event_log import HELD_S, EventWriter, entry_events, resume_point


async def test_events_are_stored_in_order_with_their_ttl(redis_client):
    run_id = f"log-{uuid.uuid4().hex[:8]}"
    writer = EventWriter(redis_client, "log-thread", run_id, ttl_s=600)
    for index in range(300):
        writer.append("custom", {"n": index})
        if index % 50 == 0:
            await asyncio.sleep(0)  # let the writer run now and then, as a graph does
    await writer.flush()
    assert [event["n"] for event in await stored(redis_client, run_id)] == list(range(300))
    assert 0 < await redis_client.ttl(events_key("log-thread", run_id)) <= 600


async def test_a_burst_of_tokens_goes_out_in_a_few_writes(redis_client):
    """Tokens a few ms apart share writes (the linger), in order: one write per linger
    of tokens (~80 ms of them at 50 ms: 2-3 writes, not 40), however slowly they came.
    Each write is one entry."""
    run_id = f"log-{uuid.uuid4().hex[:8]}"
    writer = EventWriter(redis_client, "log-thread", run_id, ttl_s=600, linger_s=0.05)
    started = time.monotonic()
    for index in range(40):
        writer.append("messages", {"n": index})
        await asyncio.sleep(0.002)
    lingers = (time.monotonic() - started) / 0.05
    await writer.flush()
    assert [event["n"] for event in await stored(redis_client, run_id)] == list(range(40))
    writes = len(await redis_client.xrange(events_key("log-thread", run_id)))
    assert 1 <= writes <= lingers + 2, (writes, lingers)


async def test_a_quiet_stream_writes_soon_a_busy_one_lingers(redis_client):
    """A new stream's first event waits for company (a run's metadata and its input's
    state go in one write); after a quiet spell an event waits 10 ms at most (a
    message's first token); one within the linger of the last write waits all of it.
    A write's time is its entry's (Redis's clock): a slow event loop only delays lingering
    writes, and the quiet one has half the linger to spare."""
    run_id = f"log-{uuid.uuid4().hex[:8]}"
    key = events_key("log-thread", run_id)
    linger = 0.8
    writer = EventWriter(redis_client, "log-thread", run_id, ttl_s=600, linger_s=linger)
    appended = time.time()
    writer.append("metadata", {"n": 1})
    await asyncio.sleep(0.05)
    writer.append("values", {"n": 2})
    assert (await write_times(redis_client, key, 1))[0] - appended > linger - 0.01  # lingered
    assert len(await stored(redis_client, run_id)) == 2
    assert len(await redis_client.xrange(key)) == 1  # one write for both
    await asyncio.sleep(linger + 0.1)  # quiet
    appended = time.time()
    writer.append("messages", {"n": 3})
    assert (await write_times(redis_client, key, 2))[1] - appended < linger / 2  # 10 ms
    appended = time.time()
    writer.append("messages", {"n": 4})  # right after a write: lingers
    assert (await write_times(redis_client, key, 3))[2] - appended > linger - 0.01
    await writer.flush()
    assert [event["n"] for event in await stored(redis_client, run_id)] == [1, 2, 3, 4]


async def test_a_held_writer_writes_a_runs_last_events_with_its_end(redis_client):
    """Held (the run's graph is done), its last state waits for the end instead of its
    10 ms after a quiet spell, and both go in one write."""
    run_id = f"log-{uuid.uuid4().hex[:8]}"
    key = events_key("log-thread", run_id)
    writer = EventWriter(redis_client, "log-thread", run_id, ttl_s=600, linger_s=0.05)
    writer.append("metadata", {"n": 1})
    await writer.flush()
    await asyncio.sleep(0.1)  # quiet
    writer.append("values", {"n": 2})
    writer.hold()
    await asyncio.sleep(0.1)  # its 10 ms are long past, its second (HELD_S) far off
    assert len(await stored(redis_client, run_id)) == 1  # waiting for the end
    writer.append("end", {"n": 3})
    await writer.flush()
    assert [event["n"] for event in await stored(redis_client, run_id)] == [1, 2, 3]
    assert len(await redis_client.xrange(key)) == 2
    appended = time.time()
    writer.append("values", {"n": 4})  # flushed: not held any more (its linger, not HELD_S)
    assert (await write_times(redis_client, key, 3))[2] - appended < HELD_S / 2
    assert len(await stored(redis_client, run_id)) == 4


async def test_a_failed_write_is_raised_once_then_writing_goes_on():
    dead = Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    writer = EventWriter(dead, "thread-x", "run-x", ttl_s=60, retry_s=0)
    writer.append("metadata", {"run_id": "run-x"})
    with pytest.raises(RedisConnectionError):
        await writer.flush()
    await writer.flush()  # raised once; nothing pending
    writer.append("end", {})  # tried again, with the first event still first
    with pytest.raises(RedisConnectionError):
        await writer.flush()
    assert [event for event, _ in writer._pending] == ["metadata", "end"]
    await dead.aclose()


async def test_a_write_that_fails_for_a_moment_loses_nothing(redis_client):
    """Redis paused for writes longer than the client's socket timeout: the batch that
    timed out is written again, in order, once Redis answers."""
    run_id = f"log-{uuid.uuid4().hex[:8]}"
    impatient = Redis.from_url(redis_client.connection_pool.connection_kwargs.get("path")
                               or _url(redis_client), socket_timeout=0.3,
                               retry=Retry(NoBackoff(), 0))
    writer = EventWriter(impatient, "log-thread", run_id, ttl_s=60, retry_s=10)
    writer.append("custom", {"n": 0})
    await writer.flush()
    await redis_client.execute_command("CLIENT", "PAUSE", 800, "WRITE")
    for index in range(1, 6):
        writer.append("custom", {"n": index})
    await writer.flush()
    assert [event["n"] for event in await stored(redis_client, run_id)] == list(range(6))
    await impatient.aclose()


async def test_every_event_of_an_entry_has_an_id_a_stream_resumes_after(redis_client):
    """A batch is one entry; ``Last-Event-ID`` of any event in it resumes right after it."""
    run_id = f"log-{uuid.uuid4().hex[:8]}"
    writer = EventWriter(redis_client, "log-thread", run_id, ttl_s=60)
    writer.append("custom", {"n": 0})
    writer.append("custom", {"n": 1})
    writer.append("custom", {"n": 2})  # appended before the first write: one entry
    await writer.flush()
    entries = await redis_client.xrange(events_key("log-thread", run_id))
    assert len(entries) == 1
    ids = [event_id for event_id, _, _ in entry_events(*entries[0])]
    entry_id = entries[0][0]
    assert ids == [entry_id + b".0", entry_id + b".1", entry_id]
    assert resume_point(entry_id.decode()) == (entry_id.decode(), None, 0)
    after, entry, seen = resume_point(ids[1].decode())
    assert (entry, seen) == (entry_id.decode(), 2)
    assert await redis_client.xrange(events_key("log-thread", run_id), f"({after}") == entries


async def stored(client: Redis, run_id: str) -> list[dict]:
    """The data of every event stored for ``run_id``, in order."""
    entries = await client.xrange(events_key("log-thread", run_id))
    return [json.loads(data) for entry in entries for _, _, data in entry_events(*entry)]


async def write_times(client: Redis, key: str, count: int) -> list[float]:
    """When each write to ``key`` was stored (epoch seconds: its entry id, Redis's clock),
    once there are ``count`` of them (waited for, up to 10 s)."""
    deadline = time.monotonic() + 10
    while len(entries := await client.xrange(key)) < count:
        assert time.monotonic() < deadline, f"{len(entries)} of {count} writes"
        await asyncio.sleep(0.005)
    return [int(entry_id.split(b"-")[0]) / 1000 for entry_id, _ in entries]


def _url(client: Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
