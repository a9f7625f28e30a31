"""Exactly-once side effects: every sensitive tool call has an idempotency key, and its
result is recorded under that key in Redis before the effect is reported done.

A node replayed after a crash (its checkpoint was not written) calls the tool again with the
same key and gets the recorded result instead of a second effect. Tools whose effect lives in
Redis (the back office) keep a receipt of the key in the same MULTI/EXEC as the effect, as an
external system keeps the idempotency keys it was sent: exactly once. Other tools can only
be recorded right after the effect: a crash in between can repeat it. An entry's key
(``agents.keys.effect_key``) is under its thread's prefix: it goes with the thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from redis.asyncio import Redis

LEDGER_TTL_S = 30 * 24 * 3600

# The key of the sensitive call being executed, for tools that join our transaction.
current_effect_key: ContextVar[str | None] = ContextVar("current_effect_key", default=None)


class EffectLedger:
    def __init__(self, redis: Redis):
        self.redis = redis

    async def recorded(self, key: str) -> str | None:
        value = await self.redis.get(key)
        return value.decode() if isinstance(value, bytes) else value

    async def run_once(self, key: str, effect: Callable[[], Awaitable[str]]) -> str:
        """The recorded result if ``key`` already ran, else run ``effect`` and record it."""
        if (done := await self.recorded(key)) is not None:
            return done
        token = current_effect_key.set(key)
        try:
            result = await effect()
        finally:
            current_effect_key.reset(token)
        await self.redis.set(key, result, ex=LEDGER_TTL_S, nx=True)
        return await self.recorded(key) or result
