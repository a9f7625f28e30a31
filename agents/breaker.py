"""A circuit breaker per model endpoint, shared by every replica through Redis.

Without it each model call retried on its own, so a provider outage multiplied the load on
the provider and every run of every user failed one by one. Here every failed attempt
(429, 5xx, a timeout, a refused connection) counts against the endpoint in one Redis hash
(``agents.keys.breaker_key``): after ``breaker.failures`` in a row it opens for
``breaker.cooldown_s``; a ``Retry-After`` from the provider opens it for that long at
once. While it is open no replica calls the endpoint: a call waits for it to close if that
is within ``breaker.max_wait_s`` (and its run's deadline, which cancels the wait), else it
fails at once with ``ModelUnavailable``; admission refuses new runs with 503 and the time it
reopens (``serve_app.runs.admission``). After the cool-down one call at a time probes the
endpoint (the others wait on, not a herd of retries): a success closes the breaker for
everyone, a failure opens it again. So after the provider recovers, runs go on with no
restart.

Each replica reads the shared state at most every ``REFRESH_S`` and on its own failures: a
replica sees another's opening within a quarter of a second, and a healthy endpoint costs
four Redis reads a second per process, not one per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from agents.errors import AgentClusterError
from agents.keys import breaker_key
from agents.settings import BreakerSettings

REFRESH_S = 0.25
TTL_S = 86400  # a breaker nobody touched for a day is forgotten (closed)

# KEYS[1]: the breaker; ARGV: now, failures that open it, cool-down, Retry-After (0: none),
# cause, TTL. Counts one failure; opens (or extends) it. Returns {failures, open_until}.
_FAILED = """
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local now, wait = tonumber(ARGV[1]), tonumber(ARGV[4])
if n >= tonumber(ARGV[2]) then wait = math.max(wait, tonumber(ARGV[3])) end
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if wait > 0 and now + wait > open_until then
  open_until = now + wait
  redis.call('HSET', KEYS[1], 'open_until', tostring(open_until), 'cause', ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {n, tostring(open_until)}
"""

# KEYS[1]: the breaker; ARGV: now, how long a probe may take. 1: the caller probes (or the
# breaker is closed already); 0: another call is probing.
_PROBE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
local now = tonumber(ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0') > now then return 0 end
redis.call('HSET', KEYS[1], 'probe_until', tostring(now + tonumber(ARGV[2])))
return 1
"""


class ModelUnavailable(AgentClusterError):
    """The model endpoint's circuit is open for longer than a call may wait."""

    def __init__(self, endpoint: str, cause: str, retry_in_s: float):
        super().__init__(f"the model endpoint {endpoint} is unavailable ({cause}); its "
                         f"circuit breaker reopens in {math.ceil(retry_in_s)} s")
        self.endpoint, self.cause, self.retry_in_s = endpoint, cause, retry_in_s

    def __reduce__(self) -> tuple:  # crosses a Ray handle intact
        return ModelUnavailable, (self.endpoint, self.cause, self.retry_in_s)


@dataclass
class State:
    failures: int = 0
    open_until: float = 0.0  # epoch seconds
    cause: str = ""

    def open_for(self) -> float:
        return max(0.0, self.open_until - time.time())


class Breaker:
    def __init__(self, redis: Redis, endpoint: str, settings: BreakerSettings):
        self.redis = redis
        self.endpoint = endpoint
        self.key = breaker_key(endpoint)
        self.settings = settings
        self.known = State()
        self._read_at = -math.inf
        self._failed = redis.register_script(_FAILED)
        self._probe = redis.register_script(_PROBE)
        _breakers[endpoint] = self

    async def state(self, fresh: bool = False) -> State:
        """The shared state, as read at most ``REFRESH_S`` ago (now, if ``fresh``)."""
        if fresh or time.monotonic() - self._read_at > REFRESH_S:
            self._read_at = time.monotonic()
            failures, open_until, cause = await self.redis.hmget(
                self.key, ["failures", "open_until", "cause"])
            self.known = State(int(failures or 0), float(open_until or 0),
                               (cause or b"").decode() if isinstance(cause, bytes)
                               else cause or "")
        return self.known

    async def wait(self, until: float) -> None:
        """Return once the circuit is closed, or this call is the one to probe it after its
        cool-down; wait while it is open or another call probes, or raise
        ``ModelUnavailable`` at once if that goes on past ``until`` (``time.monotonic``)."""
        state = await self.state()
        while True:
            open_for = state.open_for()
            if not open_for:
                if state.failures < self.settings.failures or \
                        await self._probe(keys=[self.key], args=[time.time(),
                                                                 self.settings.cooldown_s]):
                    return
                open_for = REFRESH_S  # another call probes: its outcome is known soon
            if time.monotonic() + open_for > until:
                raise ModelUnavailable(self.endpoint, state.cause, open_for)
            await asyncio.sleep(open_for)
            state = await self.state(fresh=True)

    async def failed(self, cause: str, retry_after_s: float | None) -> None:
        """One failed attempt: counted for every replica; may open the circuit."""
        failures, open_until = await self._failed(keys=[self.key], args=[
            time.time(), self.settings.failures, self.settings.cooldown_s,
            retry_after_s or 0, cause, TTL_S])
        self.known = State(int(failures), float(open_until), cause)
        self._read_at = time.monotonic()

    async def succeeded(self) -> None:
        """The endpoint answered: the failures in a row end (a write only after some)."""
        if self.known.failures:
            self.known = State()
            await self.redis.delete(self.key)


_breakers: dict[str, Breaker] = {}  # this process's, by endpoint (the latest built)


async def open_circuit() -> Breaker | None:
    """A breaker of this process's model endpoints that is open now (its state at most
    ``REFRESH_S`` old), for admission to refuse new runs while it is."""
    for breaker in list(_breakers.values()):
        with contextlib.suppress(RedisError, RuntimeError):  # a closed client: not ours now
            if (await breaker.state()).open_for() > 0:
                return breaker
    return None
