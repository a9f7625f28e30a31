"""A run's event log: appended without waiting, stored in order, failures surfaced once."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from agents.local.process import free_port
from serve_app.event_log import EventWriter
from serve_app.keys import events_key


async def test_events_are_stored_in_order_with_their_ttl(redis_client):
    run_id = f"log-{uuid.uuid4().hex[:8]}"
    writer = EventWriter(redis_client, run_id, ttl_s=600)
    for index in range(300):
        writer.append("custom", {"n": index})
        if index % 50 == 0:
            await asyncio.sleep(0)  # let the writer run now and then, as a graph does
    await writer.flush()
    stored = await redis_client.xrange(events_key(run_id))
    assert [json.loads(fields[b"data"])["n"] for _, fields in stored] == list(range(300))
    assert 0 < await redis_client.ttl(events_key(run_id)) <= 600


async def test_a_failed_write_is_raised_once_then_writing_goes_on():
    dead = Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    writer = EventWriter(dead, "run-x", ttl_s=60)
    writer.append("metadata", {"run_id": "run-x"})
    with pytest.raises(RedisConnectionError):
        await writer.flush()
    await writer.flush()  # raised once; nothing pending
    writer.append("end", {})  # tried again
    with pytest.raises(RedisConnectionError):
        await writer.flush()
    await dead.aclose()
