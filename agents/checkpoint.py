"""Redis connections and the LangGraph checkpointer built on them.

One ``BlockingConnectionPool`` per process: at 50 concurrent threads the saver's own
``from_conn_string`` pool raises ``MaxConnectionsError``, a blocking pool waits instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import orjson
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
)
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.checkpoint.redis.util import to_storage_safe_id, to_storage_safe_str
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from ulid import ULID

from agents.errors import RedisUnavailableError
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


class LeanRedisSaver(AsyncRedisSaver):
    """``AsyncRedisSaver`` whose checkpoint write is one round trip and one serialisation.

    The stock ``aput`` serialises the checkpoint, parses it back, and has redis-py dump it
    again with the standard ``json`` module, then sets the latest-checkpoint pointer in a
    second round trip. Here the serialised bytes are embedded as they are
    (``orjson.Fragment``) and both writes share a pipeline. The stored documents are the
    stock ones, key for key, so the stock saver and its tools read them unchanged.
    """

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions,
                   *args: Any, **kwargs: Any) -> RunnableConfig:
        configurable = config["configurable"]
        thread_id, checkpoint_ns = configurable["thread_id"], configurable["checkpoint_ns"]
        parent_id = configurable.get("checkpoint_id")
        checkpoint_id = checkpoint["id"]
        body = {"type": "json", **checkpoint, "pending_sends": []}
        body["channel_versions"] = {k: str(v) for k, v in checkpoint["channel_versions"].items()}
        type_, data = self.serde.dumps_typed(body)
        if self.cluster_mode or type_ != "json" or not checkpoint_id:
            return await super().aput(config, checkpoint, metadata, new_versions, *args,
                                      **kwargs)  # the stock path covers the rare cases
        run_id = configurable.get("run_id", metadata.get("run_id"))
        document = {
            "thread_id": to_storage_safe_id(thread_id),
            "run_id": to_storage_safe_id(run_id) if run_id else "",
            "checkpoint_ns": to_storage_safe_str(checkpoint_ns),
            "checkpoint_id": to_storage_safe_id(checkpoint_id),
            "parent_checkpoint_id": to_storage_safe_id(parent_id)
            if parent_id and parent_id != checkpoint_id else "",
            "checkpoint_ts": _timestamp_ms(checkpoint_id),
            "checkpoint": orjson.Fragment(data),
            "metadata": self._dump_metadata(metadata),
            "has_writes": False,
        }
        if "source" in metadata and "step" in metadata:
            document["source"], document["step"] = metadata["source"], metadata["step"]
        key = self._make_redis_checkpoint_key_cached(thread_id, checkpoint_ns, checkpoint_id)
        latest = self._make_redis_checkpoint_latest_key(thread_id, checkpoint_ns)
        pipe = self._redis.pipeline(transaction=False)
        pipe.execute_command("JSON.SET", key, "$", orjson.dumps(document))
        pipe.set(latest, key)
        if self.ttl_config and "default_ttl" in self.ttl_config:
            ttl_s = int(self.ttl_config["default_ttl"] * 60)
            pipe.expire(key, ttl_s)
            pipe.expire(latest, ttl_s)
        # A cancelled run still stores the checkpoint it was writing, as the stock saver does.
        await asyncio.shield(pipe.execute())
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
                                 "checkpoint_id": checkpoint_id}}

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        """The stock documents and pipeline, each encoded once by orjson."""
        if self.cluster_mode or not writes:
            return await super().aput_writes(config, writes, task_id, task_path)
        configurable = config["configurable"]
        thread_id, checkpoint_id = configurable["thread_id"], configurable["checkpoint_id"]
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        pipe = self._redis.pipeline(transaction=False)
        keys = []
        for index, (channel, value) in enumerate(writes):
            type_, blob = self.serde.dumps_typed(value)
            idx = WRITES_IDX_MAP.get(channel, index)
            key = self._make_redis_checkpoint_writes_key_cached(
                thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
            document = {
                "thread_id": to_storage_safe_id(thread_id),
                "checkpoint_ns": to_storage_safe_str(checkpoint_ns),
                "checkpoint_id": to_storage_safe_id(checkpoint_id),
                "task_id": task_id, "task_path": task_path, "idx": idx, "channel": channel,
                "type": type_, "blob": self._encode_blob(blob),
            }
            pipe.execute_command("JSON.SET", key, "$", orjson.dumps(document))
            keys.append(key)
        checkpoint_key = self._make_redis_checkpoint_key(thread_id, checkpoint_ns, checkpoint_id)
        pipe.execute_command("JSON.MERGE", checkpoint_key, "$", b'{"has_writes":true}')
        if self._key_registry:
            registry = self._key_registry.make_write_keys_zset_key(
                thread_id, checkpoint_ns, checkpoint_id)
            pipe.zadd(registry, {key: index for index, key in enumerate(keys)})
            keys.append(registry)
        if self.ttl_config and "default_ttl" in self.ttl_config:
            for key in keys:
                pipe.expire(key, int(self.ttl_config["default_ttl"] * 60))
        # The checkpoint may not exist yet (LangGraph saves writes and checkpoints
        # concurrently): its JSON.MERGE may fail, as in the stock saver; the writes stand.
        for result in await asyncio.shield(pipe.execute(raise_on_error=False)):
            if isinstance(result, Exception) and "merge" not in str(result).lower() and \
                    "does not exist" not in str(result).lower():
                raise result


def _timestamp_ms(checkpoint_id: str) -> float:
    try:
        return ULID.from_str(checkpoint_id).timestamp
    except (ValueError, TypeError):  # not a ULID: the stock saver uses the time too
        return time.time() * 1000


async def create_checkpointer(redis: Redis, settings: RedisSettings) -> LeanRedisSaver:
    """``LeanRedisSaver`` on our pool (it does not close a client it did not create)."""
    ttl = None
    if settings.checkpoint_ttl_minutes is not None:
        ttl = {"default_ttl": settings.checkpoint_ttl_minutes, "refresh_on_read": True}
    saver = LeanRedisSaver(redis_client=redis, ttl=ttl)
    await saver.asetup()
    return saver
