"""Who may run on a thread, decided atomically in Redis (small Lua scripts over the
thread's own keys, one hash slot).

- Every non-terminal run of a thread is in the thread's queue, in creation order;
  ``reject`` refuses to join a non-empty queue.
- Only the head of the queue may take the thread's lease, with a fencing token (a per-thread
  counter): at most one active run per thread across all replicas, runs in order.
- Only a holder of the current token may renew or release the lease; leaving the queue
  names the next head, which the caller hands to the run pool.

A Redis that stalls (``CLIENT PAUSE WRITE``, ``DEBUG SLEEP``, a slow fsync) holds every
renewal back meanwhile, so no lease may be judged by a time the stall includes: the thread
lease lives ``THREAD_LEASE_FACTOR`` leases (a dead replica's runs are found by their run
leases, the pool's ``running``, never by this expiry), and run leases are renewed and
forfeited by Redis's own clock when the command runs (``RENEW_RUNS``, ``FORFEIT``), so a
renewal held back by a stall still lands before a forfeit sent during it.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from serve_app.keys import fence_key, queue_key, thread_lease_key

# A Lua function for scripts over a thread's keys: the run joins the queue (last), unless
# ``reject`` and the queue is not empty. -> 0 refused, 1 joined at the head (may run now),
# 2 joined behind another run; and the run ids queued before it.
JOIN_QUEUE = """
local function join_queue(queue, run, reject)
  local queued = redis.call('zrange', queue, 0, -1, 'WITHSCORES')
  local before = {}
  for i = 1, #queued, 2 do before[#before + 1] = queued[i] end
  if reject and before[1] then return 0, before end
  redis.call('zadd', queue, (tonumber(queued[#queued]) or 0) + 1, run)
  if before[1] then return 2, before end
  return 1, before
end
"""

_JOIN = JOIN_QUEUE + "return (join_queue(KEYS[1], ARGV[1], ARGV[2] == '1'))"

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

RENEW = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
"""

# -> {done, next head}: the next head is named only once the thread is free (no lease
# left), so a run that is already running is never queued twice. Without a token a run
# leaves as its dead owner would: it drops a lease of its own, never another run's.
_LEAVE = """
local holder = redis.call('get', KEYS[1])
if ARGV[2] ~= '' then
  if holder == ARGV[2] then redis.call('del', KEYS[1]); holder = false
  elseif holder then return {0, ''} end
elseif holder and string.sub(holder, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ':' then
  redis.call('del', KEYS[1]); holder = false
end
redis.call('zrem', KEYS[2], ARGV[1])
if holder then return {1, ''} end
local head = redis.call('zrange', KEYS[2], 0, 0)[1]
return {1, head or ''}
"""

# Redis's clock (ms) when the script runs, not when its caller sent it.
_NOW = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1]: a pool's ``running``; ARGV[1]: the lease (ms), then the runs still held.
RENEW_RUNS = _NOW + """
for i = 2, #ARGV do redis.call('zadd', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
return 1
"""

# Take an expired run away from its owner, if it is still expired when this runs.
FORFEIT = _NOW + """
local expiry = redis.call('zscore', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) > now then return 0 end
return redis.call('zrem', KEYS[1], ARGV[1])
"""

# The thread lease outlives a stall that the sockets wait out (``redis.socket_timeout_s``,
# 5 s, past the 3 s run lease): a stall delays its renewals without fencing a live run out.
THREAD_LEASE_FACTOR = 3

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
return 1
"""


class Leases:
    def __init__(self, redis: Redis, ttl_s: float):
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000 * THREAD_LEASE_FACTOR)
        self._join = redis.register_script(_JOIN)
        self._acquire = redis.register_script(_ACQUIRE)
        self._leave = redis.register_script(_LEAVE)
        self._release = redis.register_script(_RELEASE)

    async def join(self, thread_id: str, run_id: str, reject: bool) -> int:
        """Queue the run on its thread: 1 at the head, 2 behind another run, 0 refused
        (``reject`` and the thread is busy)."""
        return int(await self._join([queue_key(thread_id)], [run_id, "1" if reject else "0"]))

    async def acquire(self, thread_id: str, run_id: str) -> str | None:
        """The fencing token if this run is next and the thread is free (or already its,
        from an earlier attempt of the same run)."""
        token = await self._acquire(_acquire_keys(thread_id), [run_id, self.ttl_ms])
        return token.decode() if isinstance(token, bytes) else token

    def acquire_in(self, pipe: Pipeline, thread_id: str, run_id: str) -> None:
        """``acquire`` as one command of the caller's pipeline (``acquired`` reads its
        reply): no round trip of its own."""
        evalsha_in(pipe, self._acquire.sha, _acquire_keys(thread_id), run_id, self.ttl_ms)

    async def acquired(self, reply: Any, thread_id: str, run_id: str) -> str | None:
        """The token from ``acquire_in``'s reply (``execute(raise_on_error=False)``); a
        Redis that lost its scripts (a restart, a failover) gets it loaded and run again."""
        if not ran(reply):
            return await self.acquire(thread_id, run_id)
        return reply.decode() if isinstance(reply, bytes) else reply

    async def leave(self, thread_id: str, run_id: str, token: str | None
                    ) -> tuple[bool, str | None]:
        """Dequeue a finished run and free its thread: (done, the run to start next if the
        thread is now free). Refused (False) if another run holds the thread."""
        return _left(await self._leave(_leave_keys(thread_id), [run_id, token or ""]))

    def leave_in(self, pipe: Pipeline, thread_id: str, run_id: str, token: str | None
                 ) -> None:
        """``leave`` as one command of the caller's pipeline (``left`` reads its reply)."""
        evalsha_in(pipe, self._leave.sha, _leave_keys(thread_id), run_id, token or "")

    async def left(self, reply: Any, thread_id: str, run_id: str, token: str | None
                   ) -> tuple[bool, str | None]:
        """``leave``'s answer from ``leave_in``'s reply (a lost script: loaded and run)."""
        return _left(reply) if ran(reply) else await self.leave(thread_id, run_id, token)

    async def release(self, thread_id: str, token: str) -> None:
        """Give the thread up but stay queued (a run handed back to the pool)."""
        await self._release([thread_lease_key(thread_id)], [token])

    async def queued(self, thread_id: str) -> list[str]:
        return [rid.decode() for rid in await self.redis.zrange(queue_key(thread_id), 0, -1)]


def _acquire_keys(thread_id: str) -> list[str]:
    return [queue_key(thread_id), thread_lease_key(thread_id), fence_key(thread_id)]


def _leave_keys(thread_id: str) -> list[str]:
    return [thread_lease_key(thread_id), queue_key(thread_id)]


def evalsha_in(pipe: Any, sha: str, keys: list[str], *args: Any) -> None:
    """A registered script as a plain ``EVALSHA`` in a pipeline (async or not): redis-py
    would first ask ``SCRIPT EXISTS`` (a round trip of its own); its caller handles a
    ``NoScriptError``."""
    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)


def ran(reply: Any) -> bool:
    """Whether ``evalsha_in``'s command ran (its reply from ``execute(raise_on_error=
    False)``): not if Redis lost its scripts (a restart, a failover), so the caller runs it
    again, loaded; another error is raised."""
    if isinstance(reply, NoScriptError):
        return False
    if isinstance(reply, Exception):
        raise reply
    return True


def _left(reply: Any) -> tuple[bool, str | None]:
    done, head = reply
    head = head.decode() if isinstance(head, bytes) else head
    return bool(done), head or None
