"""Redis connections and the LangGraph checkpointer built on them.

One ``BlockingConnectionPool`` per process: at 50 concurrent threads the saver's own
``from_conn_string`` pool raises ``MaxConnectionsError``, a blocking pool waits instead.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.errors import RedisUnavailableError
from agents.redis_saver import LeanRedisSaver
from agents.settings import RedisSettings


def create_redis(url: str, settings: RedisSettings) -> Redis:
    """A client on a bounded, blocking pool with timeouts, so a dead Redis fails fast, and
    a few quick retries, so a restarting Redis (or a failover) is reconnected to."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.pool_size,
        timeout=settings.pool_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=settings.retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis(connection_pool=pool)


async def check_redis(redis: Redis, url: str) -> None:
    """Raise a clear error now rather than a hang or a cryptic failure in the first node."""
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise RedisUnavailableError(f"Redis at {url} is not reachable: {exc}") from exc


async def create_checkpointer(redis: Redis, settings: RedisSettings) -> LeanRedisSaver:
    """``LeanRedisSaver`` on our pool (it does not close a client it did not create)."""
    ttl = None
    if settings.checkpoint_ttl_minutes is not None:
        ttl = {"default_ttl": settings.checkpoint_ttl_minutes, "refresh_on_read": True}
    saver = LeanRedisSaver(redis_client=redis, ttl=ttl)
    await saver.asetup()
    return saver
