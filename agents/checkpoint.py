"""Redis connections and the LangGraph checkpointer built on them.

Every client of the project is built here, so one setting (``redis.cluster``) switches all
of them to the Redis Cluster protocol. On one Redis: one ``BlockingConnectionPool`` per
process (at 50 concurrent threads the saver's own ``from_conn_string`` pool raises
``MaxConnectionsError``, a blocking pool waits instead). On a cluster: redis-py's
``RedisCluster``, with a pool of ``pool_size`` connections per node.
"""

from __future__ import annotations

import redis
from redis.asyncio import BlockingConnectionPool, Connection, ConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.errors import RedisUnavailableError
from agents.redis_saver import LeanRedisSaver
from agents.settings import RedisSettings

AnyRedis = Redis | RedisCluster

# What a synchronous client can take from an asyncio client's connection settings.
_SYNC_KWARGS = ("host", "port", "db", "username", "password", "path", "socket_timeout",
                "socket_connect_timeout", "ssl", "ssl_cert_reqs", "ssl_ca_certs")


def _retry(settings: RedisSettings) -> Retry:
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=settings.retries)


def create_redis(url: str, settings: RedisSettings) -> AnyRedis:
    """A client with timeouts, so a dead Redis fails fast, and a few quick retries, so a
    restarting Redis (or a failover) is reconnected to. On a cluster ``url`` names any node;
    the client finds the others and follows slots as they move."""
    if settings.cluster:
        return RedisCluster.from_url(
            url, max_connections=settings.pool_size, retry=_retry(settings),
            socket_timeout=settings.socket_timeout_s,
            socket_connect_timeout=settings.connect_timeout_s)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.pool_size,
        timeout=settings.pool_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
        health_check_interval=30,
        retry=_retry(settings),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis(connection_pool=pool)


def connection_kwargs(client: AnyRedis) -> dict:
    """The connection settings (timeouts, auth) of ``client``'s connections."""
    if isinstance(client, RedisCluster):
        return client.get_connection_kwargs()
    return client.connection_pool.connection_kwargs


def dedicated_client(client: AnyRedis) -> AnyRedis:
    """A client for blocking reads (``BZPOPMIN``, ``XREAD BLOCK``) that the caller closes.
    On one Redis: one connection of ``client``'s pool, held. On a cluster: a client of its
    own on the same nodes (each blocking read holds a connection of the node it reads)."""
    if isinstance(client, RedisCluster):
        nodes = [redis.asyncio.cluster.ClusterNode(n.host, n.port)
                 for n in client.get_primaries()]
        return RedisCluster(startup_nodes=nodes, retry=client.retry,
                            **_cluster_kwargs(client.get_connection_kwargs()))
    return Redis(connection_pool=client.connection_pool, single_connection_client=True)


def sync_client(client: AnyRedis) -> redis.Redis | redis.RedisCluster:
    """A synchronous client on the same server(s) as ``client``, for a thread of its own."""
    if isinstance(client, RedisCluster):
        nodes = [redis.cluster.ClusterNode(n.host, n.port) for n in client.get_primaries()]
        return redis.RedisCluster(startup_nodes=nodes,
                                  **_cluster_kwargs(client.get_connection_kwargs()))
    kwargs = {k: v for k, v in connection_kwargs(client).items() if k in _SYNC_KWARGS}
    if "path" in kwargs:
        return redis.Redis(unix_socket_path=kwargs.pop("path"), **kwargs)
    return redis.Redis(**kwargs)


class _SlotMasterConnection(Connection):
    """A connection to whichever master holds ``slot_key``'s slot when it connects. A
    reconnect follows from an error (the master died, or answers ``MOVED`` as a replica
    after a failover): it asks the cluster client for its slot map again first (redis-py
    runs at most one refresh at a time, and none sooner than its minimum interval)."""

    def __init__(self, *, cluster: RedisCluster, slot_key: str, **kwargs):
        super().__init__(**kwargs)
        self._cluster, self._slot_key, self._first = cluster, slot_key, True

    async def _connect(self) -> None:
        if not self._first:  # a reconnect, or another try after a failed connect
            self._cluster._request_refresh()  # redis-py 8's; its own errors call it too
        self._first = False
        await self._cluster.initialize()
        node = self._cluster.get_node_from_key(self._slot_key)
        self.host, self.port = node.host, node.port
        await super()._connect()


def slot_master_client(cluster: RedisCluster, slot_key: str) -> Redis:
    """A client of the one master that holds ``slot_key``'s slot (what RediSearch needs on
    a cluster: ``agents.slots``) that follows the slot to the replica promoted in a
    failover, where a client of a fixed node would fail until the process restarts."""
    kwargs = {k: v for k, v in cluster.get_connection_kwargs().items()
              if k in ("username", "password", "socket_timeout", "socket_connect_timeout")}
    pool = ConnectionPool(connection_class=_SlotMasterConnection, cluster=cluster,
                          slot_key=slot_key, retry=cluster.retry,
                          retry_on_error=[RedisConnectionError, RedisTimeoutError, MovedError],
                          **kwargs)
    return Redis(connection_pool=pool)


def _cluster_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items()
            if k in _SYNC_KWARGS and k not in ("host", "port", "db", "path")}


async def close_redis(client: AnyRedis) -> None:
    """Close ``client`` and every connection of its pool(s)."""
    await client.aclose()
    if not isinstance(client, RedisCluster):
        await client.connection_pool.disconnect()


async def check_redis(redis: AnyRedis, url: str) -> None:
    """Raise a clear error now rather than a hang or a cryptic failure in the first node."""
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise RedisUnavailableError(f"Redis at {url} is not reachable: {exc}") from exc


async def create_checkpointer(redis: AnyRedis, settings: RedisSettings) -> LeanRedisSaver:
    """``LeanRedisSaver`` on our pool (it does not close a client it did not create)."""
    return LeanRedisSaver(redis_client=redis, ttl_minutes=settings.checkpoint_ttl_minutes)
