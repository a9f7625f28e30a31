"""A faster writer of ``langgraph-checkpoint-redis``'s own documents.

Checkpointing is the hot path of every agent step. The stock ``AsyncRedisSaver`` spends it
in Python: it re-serialises every message of the thread at every step, serialises the
checkpoint, parses it back and dumps it again with the standard ``json`` module, and makes
two round trips. ``LeanRedisSaver`` writes the same documents, key for key (so the stock
saver and its tools read them unchanged), with each message serialised once in its life,
the checkpoint encoded once, and one pipeline per write.

On a Redis Cluster (``cluster_mode``, detected from a ``RedisCluster`` client) the layout
differs from the stock one in one place: the thread id in every key is hash-tagged
(``checkpoint:{<thread>}:<ns>:<id>``, ``agents.slots``; sub-threads take their parent's
tag), so a thread's checkpoints, writes, write registries and latest pointer share the hash
slot of the thread's serving keys, and a write stays one pipeline (and one fenced script).
The stock saver builds untagged keys, so it cannot read a cluster's checkpoints. RediSearch
on an OSS cluster indexes each shard's own keys and has no cross-shard query: the indexes are
created on every master, and each search runs on the master that holds the thread's slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import orjson
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
)
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.checkpoint.redis.base import REDIS_KEY_SEPARATOR
from langgraph.checkpoint.redis.jsonplus_redis import JsonPlusRedisSerializer
from langgraph.checkpoint.redis.key_registry import AsyncCheckpointKeyRegistry
from langgraph.checkpoint.redis.util import to_storage_safe_id, to_storage_safe_str
from redis.asyncio import RedisCluster
from redis.commands.search.query import Query
from redisvl.index import AsyncSearchIndex
from ulid import ULID

from agents.slots import Shard, every_shard, load_fields, shard_of, tagged

Command = tuple[Any, ...]
MAY_FAIL = "may-fail"  # first word of a command whose failure does not fail the write


class MessageCachingSerializer(JsonPlusRedisSerializer):
    """Serialises each message object once: a thread's messages are in every checkpoint,
    and LangChain's ``to_json`` of a message costs more than the rest of the step.

    The cache holds encoded bytes per live message object (entries go with the object)
    and is checked against a fingerprint of the fields that LangGraph sets after creation
    (an id is assigned to a message that had none); messages are otherwise treated as
    immutable, as LangGraph's reducers do (they replace a message by id, never edit it).
    """

    def __init__(self) -> None:
        super().__init__()
        self._encoded: dict[int, tuple[tuple, orjson.Fragment]] = {}

    def _default_handler(self, obj: Any) -> Any:
        if not isinstance(obj, BaseMessage):
            return super()._default_handler(obj)
        key, fingerprint = id(obj), _fingerprint(obj)
        cached = self._encoded.get(key)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        encoded = orjson.Fragment(orjson.dumps(super()._default_handler(obj),
                                               default=self._default_handler))
        if cached is None:
            weakref.finalize(obj, self._encoded.pop, key, None)
        self._encoded[key] = (fingerprint, encoded)
        return encoded


def _fingerprint(message: BaseMessage) -> tuple:
    return (message.id, message.name, len(message.content),
            len(getattr(message, "tool_calls", None) or ()))


class LeanRedisSaver(AsyncRedisSaver):
    """``AsyncRedisSaver`` whose checkpoint write is one round trip and one serialisation.

    The stock ``aput`` serialises the checkpoint, parses it back, and has redis-py dump it
    again with the standard ``json`` module, then sets the latest-checkpoint pointer in a
    second round trip. Here the serialised bytes are embedded as they are
    (``orjson.Fragment``) and both writes share a pipeline. The stored documents are the
    stock ones, key for key, so the stock saver and its tools read them unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.serde = MessageCachingSerializer()

    async def asetup(self) -> None:
        """On a cluster: the stock setup, but with the indexes created on every master
        (through the cluster client ``FT.CREATE`` reaches one node only) and searched on
        the thread's shard, and the write registry's keys tagged."""
        if not isinstance(self._redis, RedisCluster):
            return await super().asetup()
        self.loop = asyncio.get_running_loop()
        self.cluster_mode = True
        self.create_indexes()
        for index in (self.checkpoints_index, self.checkpoint_writes_index):
            for shard in every_shard(self._redis):
                schema = index.schema.model_copy(deep=True)
                schema.index.name = shard.index(schema.index.name)
                await AsyncSearchIndex(schema, redis_client=shard.client).create(
                    overwrite=False)
            index._redis_client = ShardRouter(self._redis)
        self._key_registry = TaggedKeyRegistry(self._redis)

    # cluster: keys tagged by thread, searches on the thread's shard
    def _thread_part(self, thread_id: str) -> str:
        """The thread id as keys carry it: hash-tagged on a cluster."""
        return tagged(str(to_storage_safe_id(thread_id))) if self.cluster_mode else thread_id

    def _make_redis_checkpoint_key(self, thread_id: str, *rest: Any) -> str:
        return super()._make_redis_checkpoint_key(self._thread_part(thread_id), *rest)

    def _make_redis_checkpoint_key_cached(self, thread_id: str, *rest: Any) -> str:
        return super()._make_redis_checkpoint_key_cached(self._thread_part(thread_id), *rest)

    def _make_redis_checkpoint_latest_key(self, thread_id: str, *rest: Any) -> str:
        return super()._make_redis_checkpoint_latest_key(self._thread_part(thread_id), *rest)

    def _make_redis_checkpoint_writes_key(self, thread_id: str, *rest: Any) -> str:
        return super()._make_redis_checkpoint_writes_key(self._thread_part(thread_id), *rest)

    def _make_redis_checkpoint_writes_key_cached(self, thread_id: str, *rest: Any) -> str:
        return super()._make_redis_checkpoint_writes_key_cached(self._thread_part(thread_id),
                                                                *rest)

    def shard_of(self, thread_id: str) -> Shard:
        """Where to ``FT.SEARCH`` a thread's (and its sub-threads') documents: on a cluster,
        the master that holds the thread's slot, whose own copies of the indexes cover them."""
        return shard_of(self._redis, self._make_redis_checkpoint_latest_key(thread_id, ""))

    @contextlib.contextmanager
    def _on_shard_of(self, thread_id: str | None) -> Iterator[None]:
        token = _SHARD.set(self.shard_of(thread_id)
                           if self.cluster_mode and thread_id is not None else None)
        try:
            yield
        finally:
            _SHARD.reset(token)

    async def aget_tuple(self, config: RunnableConfig) -> Any:
        with self._on_shard_of(config["configurable"].get("thread_id")):
            return await super().aget_tuple(config)

    async def alist(self, config: RunnableConfig | None, **kwargs: Any) -> AsyncIterator[Any]:
        thread_id = (config or {}).get("configurable", {}).get("thread_id")
        if not self.cluster_mode or thread_id is None:
            async for item in super().alist(config, **kwargs):
                yield item
            return
        with self._on_shard_of(thread_id):  # collected before yielding: the context is ours
            items = [item async for item in super().alist(config, **kwargs)]
        for item in items:
            yield item

    async def adelete_thread(self, thread_id: str) -> None:
        with self._on_shard_of(thread_id):
            await super().adelete_thread(thread_id)

    async def alatest_checkpoint_id(self, thread_id: str, checkpoint_ns: str = "") -> str | None:
        """The id of a thread's latest checkpoint from its pointer alone: one ``GET``, no
        document read or deserialisation (the pointer's value is the checkpoint's key,
        whose last segment is the id)."""
        key = await self._redis.get(self._make_redis_checkpoint_latest_key(thread_id,
                                                                             checkpoint_ns))
        return key.decode().rsplit(REDIS_KEY_SEPARATOR, 1)[-1] if key else None

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions,
                   *args: Any, **kwargs: Any) -> RunnableConfig:
        metadata = with_run_metadata(config, metadata)
        configurable = config["configurable"]
        thread_id, checkpoint_ns = configurable["thread_id"], configurable["checkpoint_ns"]
        parent_id = configurable.get("checkpoint_id")
        checkpoint_id = checkpoint["id"]
        body = {"type": "json", **checkpoint, "pending_sends": []}
        body["channel_versions"] = {k: str(v) for k, v in checkpoint["channel_versions"].items()}
        type_, data = self.serde.dumps_typed(body)
        if type_ != "json" or not checkpoint_id:
            await self._before_stock_write(config)  # the stock path covers the rare cases
            return await super().aput(config, checkpoint, metadata, new_versions, *args,
                                      **kwargs)
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
        await self._write(config, [("JSON.SET", key, "$", orjson.dumps(document)),
                                   ("SET", latest, key), *self._expiring(key, latest)])
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
                                 "checkpoint_id": checkpoint_id}}

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        """The stock documents and pipeline, each encoded once by orjson."""
        if not writes:
            await self._before_stock_write(config)
            return await super().aput_writes(config, writes, task_id, task_path)
        configurable = config["configurable"]
        thread_id, checkpoint_id = configurable["thread_id"], configurable["checkpoint_id"]
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        commands: list[Command] = []
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
            commands.append(("JSON.SET", key, "$", orjson.dumps(document)))
            keys.append(key)
        checkpoint_key = self._make_redis_checkpoint_key(thread_id, checkpoint_ns, checkpoint_id)
        commands.append((MAY_FAIL, "JSON.MERGE", checkpoint_key, "$", b'{"has_writes":true}'))
        if self._key_registry:
            registry = self._key_registry.make_write_keys_zset_key(
                thread_id, checkpoint_ns, checkpoint_id)
            commands.append(("ZADD", registry, *(x for index, key in enumerate(keys)
                                                 for x in (index, key))))
            keys.append(registry)
        await self._write(config, commands + self._expiring(*keys))

    async def _write(self, config: RunnableConfig, commands: list[Command]) -> None:
        """One pipeline. A cancelled run still stores what it was writing, as the stock saver
        does. Commands marked ``MAY_FAIL`` may: LangGraph saves a step's writes and its
        checkpoint concurrently, so the checkpoint that ``JSON.MERGE`` flags may not exist
        yet (the stock saver lets that pass too)."""
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command[command[0] == MAY_FAIL:])
        results = await asyncio.shield(pipe.execute(raise_on_error=False))
        for command, result in zip(commands, results, strict=True):
            if isinstance(result, Exception) and command[0] != MAY_FAIL:
                raise result

    async def _before_stock_write(self, config: RunnableConfig) -> None:
        """Called before a write falls back to the stock saver; a hook for subclasses."""

    def _expiring(self, *keys: str) -> list[Command]:
        if not (self.ttl_config and "default_ttl" in self.ttl_config):
            return []
        return [("EXPIRE", key, int(self.ttl_config["default_ttl"] * 60)) for key in keys]


_SHARD: ContextVar[Shard | None] = ContextVar("checkpoint_search_shard", default=None)


class ShardRouter:
    """The client the saver's RediSearch indexes use on a cluster: the shard chosen for the
    current call (``LeanRedisSaver._on_shard_of``) with its copy of the index, else the
    cluster client itself."""

    def __init__(self, cluster: RedisCluster):
        self._cluster = cluster

    def ft(self, index_name: str) -> Any:
        shard = _SHARD.get()
        if shard is None:
            return self._cluster.ft(index_name)
        return SlotLocalSearch(shard.client.ft(shard.index(index_name)), self._cluster)

    def __getattr__(self, name: str) -> Any:
        shard = _SHARD.get()
        return getattr(shard.client if shard else self._cluster, name)


class SlotLocalSearch:
    """A shard's ``ft(index)``: matching keys from the index, their fields from the documents
    (``agents.slots.load_fields``: RediSearch on a cluster loads only documents in its index
    name's slot)."""

    def __init__(self, search: Any, cluster: RedisCluster):
        self._search = search
        self._cluster = cluster

    async def search(self, query: Any, query_params: Any = None) -> Any:
        if not isinstance(query, Query):
            return await self._search.search(query, query_params)
        fields = [f.decode() if isinstance(f, bytes) else f for f in query._return_fields]
        result = await self._search.search(copy.copy(query).no_content(), query_params)
        ids = [d.id.decode() if isinstance(d.id, bytes) else d.id for d in result.docs]
        for doc, row in zip(result.docs, await load_fields(self._cluster, ids, fields),
                            strict=True):
            doc.__dict__.update(row)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._search, name)


class TaggedKeyRegistry(AsyncCheckpointKeyRegistry):
    """The stock write registry with the thread id hash-tagged, as the saver's cluster keys."""

    @staticmethod
    def make_write_keys_zset_key(thread_id: str, checkpoint_ns: str, checkpoint_id: str
                                 ) -> str:
        return AsyncCheckpointKeyRegistry.make_write_keys_zset_key(
            tagged(str(to_storage_safe_id(thread_id))), checkpoint_ns, checkpoint_id)


def with_run_metadata(config: RunnableConfig, metadata: CheckpointMetadata
                      ) -> CheckpointMetadata:
    """The checkpoint's metadata plus the run's (``config["metadata"]``: run id, graph,
    attempt), as LangGraph's in-memory and SQL savers store it and the stock Redis saver
    does not; so each checkpoint names the run that made it, and history filters on it."""
    extra = {k: v for k, v in (config.get("metadata") or {}).items()
             if k not in metadata and not k.startswith("__")
             and isinstance(v, str | int | float | bool)}
    return {**metadata, **extra} if extra else metadata


def _timestamp_ms(checkpoint_id: str) -> float:
    try:
        return ULID.from_str(checkpoint_id).timestamp
    except (ValueError, TypeError):  # not a ULID: the stock saver uses the time too
        return time.time() * 1000
