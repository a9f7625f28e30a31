"""Who may run what, decided atomically in Redis (small Lua scripts).

- Every non-terminal run of a thread is in the thread's queue (a sorted set by creation
  order); ``reject`` refuses to join a non-empty queue.
- Only the head of the queue may take the thread's lease, with a fencing token (a per-thread
  counter): at most one active run per thread across all replicas, runs in order.
- The owner renews its run lease and the thread lease; a run whose lease expired has lost its
  owner, and only a holder of the current token may write or release.
"""

from __future__ import annotations

from redis.asyncio import Redis

from serve_app.keys import (
    ALL_INFLIGHT,
    RUN_SEQUENCE,
    fence_key,
    queue_key,
    run_lease_key,
    thread_lease_key,
)

_JOIN = """
if ARGV[3] == '1' and redis.call('zcard', KEYS[1]) > 0 then return 0 end
local seq = redis.call('incr', KEYS[3])
redis.call('zadd', KEYS[1], seq, ARGV[1])
redis.call('zadd', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

_ACQUIRE = """
local head = redis.call('zrange', KEYS[1], 0, 0)[1]
if head ~= ARGV[1] then return false end
local holder = redis.call('get', KEYS[2])
if holder and string.sub(holder, 1, string.len(ARGV[1]) + 1) ~= ARGV[1] .. ':' then
  return false
end
local token = ARGV[1] .. ':' .. redis.call('incr', KEYS[3])
redis.call('set', KEYS[2], token, 'PX', ARGV[2])
return token
"""

_RENEW = """
redis.call('set', KEYS[2], ARGV[3], 'PX', ARGV[2])
if ARGV[1] == '' then return 1 end
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
"""

_LEAVE = """
if ARGV[2] ~= '' and redis.call('get', KEYS[1]) ~= ARGV[2] then return 0 end
if ARGV[2] ~= '' then redis.call('del', KEYS[1]) end
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('del', KEYS[4])
return 1
"""

_HOLDS = "return redis.call('get', KEYS[1]) == ARGV[1] and 1 or 0"


class Leases:
    def __init__(self, redis: Redis, ttl_s: float):
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self._join = redis.register_script(_JOIN)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._leave = redis.register_script(_LEAVE)
        self._holds = redis.register_script(_HOLDS)

    async def join(self, thread_id: str, run_id: str, created: float, reject: bool) -> bool:
        """Queue the run on its thread; False if ``reject`` and the thread is busy."""
        keys = [queue_key(thread_id), ALL_INFLIGHT, RUN_SEQUENCE]
        return bool(await self._join(keys, [run_id, created, "1" if reject else "0"]))

    async def acquire(self, thread_id: str, run_id: str) -> str | None:
        """The fencing token if this run is next and the thread is free (or already its)."""
        token = await self._acquire(
            [queue_key(thread_id), thread_lease_key(thread_id), fence_key(thread_id)],
            [run_id, self.ttl_ms])
        return token.decode() if isinstance(token, bytes) else token

    async def renew(self, thread_id: str, run_id: str, token: str | None, owner: str) -> bool:
        """Heartbeat: the run lease always, the thread lease if still ours."""
        keys = [thread_lease_key(thread_id), run_lease_key(run_id)]
        return bool(await self._renew(keys, [token or "", self.ttl_ms, owner]))

    async def holds(self, thread_id: str, token: str) -> bool:
        return bool(await self._holds([thread_lease_key(thread_id)], [token]))

    async def leave(self, thread_id: str, run_id: str, token: str | None) -> bool:
        """Dequeue a finished run and free its thread; refused if another holds the token."""
        keys = [thread_lease_key(thread_id), queue_key(thread_id), ALL_INFLIGHT,
                run_lease_key(run_id)]
        return bool(await self._leave(keys, [run_id, token or ""]))

    async def owner_alive(self, run_id: str) -> bool:
        return bool(await self.redis.exists(run_lease_key(run_id)))

    async def inflight(self) -> list[str]:
        return [rid.decode() for rid in await self.redis.zrange(ALL_INFLIGHT, 0, -1)]

    async def queued(self, thread_id: str) -> list[str]:
        return [rid.decode() for rid in await self.redis.zrange(queue_key(thread_id), 0, -1)]
