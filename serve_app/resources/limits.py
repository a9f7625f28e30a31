"""Limits per request and per user (``limits.*`` in ``configs/agents.yaml``; 0 turns one off).

- request body (``max_body_bytes``, default 1 MiB): 413, checked on ``Content-Length`` and
  while the body is read (chunked bodies too), before anything is parsed or stored;
- one message's text in a run's input (``max_message_chars``): 413;
- runs a user starts per minute: a token bucket in Redis (one Lua script, so every replica
  shares it): 429 with ``Retry-After``;
- runs of a user pending or running at once, and threads a user owns: 429.

A refused request stores nothing (the bucket's token is taken last, only when the run is
about to be created). Per-user limits apply to authenticated users; the open loopback mode
has no users to tell apart, so it has none of them.
"""

from __future__ import annotations

import math
import time
from typing import Any

from redis.asyncio import Redis
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agents.settings import LimitsSettings
from serve_app.keys import (
    parse_ref,
    run_key,
    run_ref,
    thread_key,
    user_bucket_key,
    user_runs_key,
    user_threads_key,
)
from serve_app.resources.api_errors import ApiError
from serve_app.runs.jsonable import dumps
from serve_app.runs.records import TERMINAL

# KEYS[1]: the bucket; ARGV: refill per second, size. Takes a token if there is one:
# returns {1, "0"} or {0, seconds until one is there}.
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, size = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or size, tonumber(state[2]) or now
tokens = math.min(size, tokens + math.max(0, now - at) * rate)
local allowed, wait = 0, (1 - tokens) / rate
if tokens >= 1 then tokens, allowed, wait = tokens - 1, 1, 0 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(size / rate) + 60)
return {allowed, tostring(wait)}
"""


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes (limits.max_body_bytes)")


class BodyLimit:
    """ASGI middleware: 413 for a body past ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limit:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            status = 413 if declared.isdigit() else 400
            detail = BodyTooLarge(self.limit).detail if status == 413 else \
                "invalid Content-Length"
            await _json(send, status, detail)
            return
        seen, over, started = 0, False, False

        async def counted() -> Message:
            """The body as it arrives; past the limit the app is told the client left."""
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            """What the app answers, unless the body was too large: then 413 instead."""
            nonlocal started
            if over and not started:
                started = True
                await _json(send, 413, BodyTooLarge(self.limit).detail)
            if over:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, guarded)
        if over and not started:
            await _json(send, 413, BodyTooLarge(self.limit).detail)


async def _json(send: Send, status: int, detail: str) -> None:
    body = dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def message_texts(values: Any) -> list[str]:
    """The text of each message in a run's input or a state update."""
    if not isinstance(values, dict):
        return []
    messages = values.get("messages")
    messages = messages if isinstance(messages, list) else [messages]
    texts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else \
            message[1] if isinstance(message, list | tuple) and len(message) == 2 else message
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [c.get("text", "") if isinstance(c, dict) else str(c) for c in content]
    return [t for t in texts if isinstance(t, str)]


class Limits:
    """``per_user``: whether there are users to count (not in the open mode): without, the
    per-user checks and counts do nothing."""

    def __init__(self, redis: Redis, settings: LimitsSettings, per_user: bool = True):
        self.redis = redis
        self.settings = settings
        self.per_user = per_user
        self._take = redis.register_script(_TAKE)

    def check_message_sizes(self, *values: Any) -> None:
        """413 for a message's text past ``max_message_chars`` (whether the messages are
        readable at all is ``serve_app.resources.threads.check_messages``'s rule)."""
        limit = self.settings.max_message_chars
        if not limit:
            return
        for value in values:
            for text in message_texts(value):
                if len(text) > limit:
                    raise ApiError(413, f"message of {len(text)} characters; at most "
                                        f"{limit} (limits.max_message_chars)")

    async def check_runs(self, identity: str) -> None:
        """429 while the user has ``concurrent_runs`` runs pending or running."""
        limit = self.settings.concurrent_runs
        if not limit or not self.per_user:
            return
        key = user_runs_key(identity)
        refs = await self.redis.zrange(key, 0, -1)
        if len(refs) < limit:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for ref in refs:
                thread_id, run_id = parse_ref(ref)
                pipe.hget(run_key(thread_id, run_id), "status")
            statuses = await pipe.execute()
        ended = [ref for ref, status in zip(refs, statuses, strict=True)
                 if status is None or _text(status).strip('"') in TERMINAL]
        if ended:
            await self.redis.zrem(key, *ended)
        if len(refs) - len(ended) >= limit:
            raise ApiError(429, f"{identity!r} has {len(refs) - len(ended)} runs pending or "
                                f"running; at most {limit} at once (limits.concurrent_runs)",
                           headers={"Retry-After": "5"})

    async def take_run(self, identity: str) -> None:
        """One run from the user's bucket, or 429 with ``Retry-After``."""
        per_minute = self.settings.runs_per_minute
        if not per_minute or not self.per_user:
            return
        size = self.settings.runs_burst or max(1, math.ceil(per_minute))
        allowed, wait = await self._take(keys=[user_bucket_key(identity)],
                                         args=[per_minute / 60, size])
        if not int(allowed):
            retry = max(1, math.ceil(float(wait)))
            raise ApiError(429, f"{identity!r} started too many runs: at most {per_minute:g} "
                                f"a minute (limits.runs_per_minute); retry after {retry} s",
                           headers={"Retry-After": str(retry)})

    async def ran(self, identity: str, run: dict[str, Any]) -> None:
        if self.settings.concurrent_runs and self.per_user:
            await self.redis.zadd(user_runs_key(identity),
                                  {run_ref(run["thread_id"], run["run_id"]): time.time()})

    async def check_threads(self, identity: str) -> None:
        """429 once the user owns ``threads_per_user`` threads (deleted ones not counted)."""
        limit = self.settings.threads_per_user
        if not limit or not self.per_user:
            return
        key = user_threads_key(identity)
        if await self.redis.zcard(key) < limit:
            return
        ids = await self.redis.zrange(key, 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for tid in ids:
                pipe.exists(thread_key(_text(tid)))
            alive = await pipe.execute()
        gone = [tid for tid, exists in zip(ids, alive, strict=True) if not exists]
        if gone:
            await self.redis.zrem(key, *gone)
        if len(ids) - len(gone) >= limit:
            raise ApiError(429, f"{identity!r} has {len(ids) - len(gone)} threads; at most "
                                f"{limit} (limits.threads_per_user): delete some first")

    async def owns(self, identity: str, thread_id: str) -> None:
        if self.settings.threads_per_user and self.per_user:
            await self.redis.zadd(user_threads_key(identity), {thread_id: time.time()},
                                  nx=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
