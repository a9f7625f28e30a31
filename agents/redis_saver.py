"""The checkpointer: LangGraph checkpoints in Redis hashes, one command per step.

Checkpointing is the hot path of every agent step, and on the way to 10,000 users Redis is
the shared tier. ``langgraph-checkpoint-redis``'s layout stores each checkpoint and each
pending write as a RedisJSON document indexed by RediSearch: ~31 ``JSON.SET`` per run at
~120-160 us of Redis's one command thread each (parsing the document into a JSON tree and
indexing it), most of a run's Redis time. Here the same data is opaque bytes in hashes
(``HSET``: a copy, no parsing, no index):

- ``ac:{<thread>}:checkpoints`` (``agents.slots.checkpoints_key``): one hash per thread,
  holding the checkpoints of the thread and of its specialists' sub-threads, every
  namespace: field ``<sub-thread suffix>#<ns>#<checkpoint id>`` -> the checkpoint (parent
  id, run id, checkpoint and metadata as the serializer types them), and field
  ``<suffix>#<ns>#latest`` -> the latest checkpoint's id. A checkpoint is one ``HSET``.
- ``ac:{<thread>}:writes:<suffix>#<ns>#<checkpoint id>``: the pending writes of one
  checkpoint, field ``<task id>:<idx>`` -> (channel, value, task path). One ``HSET`` per
  task's writes.

Every key carries the thread's hash tag, so a thread and its sub-threads live in one slot of
a Redis Cluster and every write (one fenced Lua call, ``serve_app.fencing``) stays in it. A
thread's checkpoints are found by ``HKEYS`` of its hash, never by a search: nothing here
needs RediSearch, on one Redis or a cluster. Each message is serialised once in its life
(``MessageCachingSerializer``), the checkpoint once per step.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import ormsgpack
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    writes_sort_key,
)
from langgraph.checkpoint.redis.jsonplus_redis import JsonPlusRedisSerializer

from agents.slots import (
    LATEST,
    checkpoint_field,
    checkpoint_writes_key,
    checkpoints_key,
    parse_checkpoint_field,
)

Command = tuple[Any, ...]


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


@dataclass(frozen=True)
class CheckpointRef:
    """Where a checkpoint is: its (sub-)thread, namespace and id (a field of the hash)."""

    thread_id: str
    ns: str
    checkpoint_id: str


@dataclass(frozen=True)
class Stored(CheckpointRef):
    """One checkpoint as the hash holds it, decoded only as far as asked."""

    parent_id: str
    run_id: str
    payload: tuple[str, bytes, str, bytes]  # checkpoint type + bytes, metadata type + bytes

    @classmethod
    def unpack(cls, ref: CheckpointRef, raw: bytes) -> Stored:
        parent_id, run_id, *payload = ormsgpack.unpackb(raw)
        return cls(ref.thread_id, ref.ns, ref.checkpoint_id, parent_id, run_id, tuple(payload))


class LeanRedisSaver(BaseCheckpointSaver[str]):
    """LangGraph's checkpointer interface over the hashes described above.

    ``ttl_minutes`` expires a thread's checkpoints that long after their last write. A
    subclass decides how a write's commands reach Redis (``_write``: a pipeline here, a
    fenced script in ``serve_app.fencing``).
    """

    def __init__(self, redis_client: Any, ttl_minutes: float | None = None):
        super().__init__(serde=MessageCachingSerializer())
        self._redis = redis_client
        self.ttl_minutes = ttl_minutes

    # writing
    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions
                   ) -> RunnableConfig:
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        ns = configurable.get("checkpoint_ns", "")
        parent_id = configurable.get("checkpoint_id") or ""
        metadata = with_run_metadata(config, metadata)
        run_id = str(configurable.get("run_id") or metadata.get("run_id") or "")
        checkpoint_id = checkpoint["id"]
        record = ormsgpack.packb([parent_id, run_id, *self.serde.dumps_typed(checkpoint),
                                  *self.serde.dumps_typed(metadata)])
        key = checkpoints_key(thread_id)
        await self._write(config, [
            ("HSET", key, checkpoint_field(thread_id, ns, checkpoint_id), record,
             checkpoint_field(thread_id, ns, LATEST), checkpoint_id),
            *self._expiring(key)])
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                 "checkpoint_id": checkpoint_id}}

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        if not writes:
            return
        configurable = config["configurable"]
        key = checkpoint_writes_key(configurable["thread_id"],
                                    configurable.get("checkpoint_ns", ""),
                                    configurable["checkpoint_id"])
        fields: list[Any] = []
        for index, (channel, value) in enumerate(writes):
            fields += [f"{task_id}:{WRITES_IDX_MAP.get(channel, index)}",
                       ormsgpack.packb([channel, *self.serde.dumps_typed(value), task_path])]
        await self._write(config, [("HSET", key, *fields), *self._expiring(key)])

    async def _write(self, config: RunnableConfig, commands: list[Command]) -> None:
        """One pipeline. A cancelled run still stores what it was writing."""
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        await asyncio.shield(pipe.execute())

    def _expiring(self, *keys: str) -> list[Command]:
        if self.ttl_minutes is None:
            return []
        return [("EXPIRE", key, int(self.ttl_minutes * 60)) for key in keys]

    def get_next_version(self, current: str | None, channel: None) -> str:
        """LangGraph's own scheme (a counter, then a random tie-breaker), as its savers."""
        number = 0 if current is None else int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # reading
    async def alatest_checkpoint_id(self, thread_id: str, checkpoint_ns: str = "") -> str | None:
        """The id of a thread's latest checkpoint: one ``HGET``, nothing decoded."""
        found = await self._redis.hget(checkpoints_key(thread_id),
                                       checkpoint_field(thread_id, checkpoint_ns, LATEST))
        return _text(found) if found else None

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id, ns = configurable["thread_id"], configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config) or \
            await self.alatest_checkpoint_id(thread_id, ns)
        if not checkpoint_id:
            return None
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(checkpoints_key(thread_id), checkpoint_field(thread_id, ns,
                                                                   checkpoint_id))
            pipe.hgetall(checkpoint_writes_key(thread_id, ns, checkpoint_id))
            raw, writes = await pipe.execute()
        if raw is None:
            return None
        return self._tuple(Stored.unpack(CheckpointRef(thread_id, ns, checkpoint_id), raw),
                           writes)

    async def alist(self, config: RunnableConfig | None, *,
                    filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None,
                    limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        """A thread's checkpoints, newest first (a thread is required: listing every
        thread would scan the keyspace). Without ``checkpoint_ns``: every namespace."""
        if not config or "thread_id" not in config.get("configurable", {}):
            raise ValueError("listing checkpoints needs a thread_id")
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        wanted = get_checkpoint_id(config)
        before_id = get_checkpoint_id(before) if before else None
        found = [s for s in await self.stored(thread_id, configurable.get("checkpoint_ns"))
                 if (not wanted or s.checkpoint_id == wanted)
                 and (not before_id or s.checkpoint_id < before_id)]
        found.sort(key=lambda s: s.checkpoint_id, reverse=True)
        picked = []
        for stored in found:
            if limit is not None and len(picked) >= limit:
                break
            if filter:
                metadata = self.serde.loads_typed(stored.payload[2:])
                if any(metadata.get(k) != v for k, v in filter.items()):
                    continue
            picked.append(stored)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stored in picked:
                pipe.hgetall(checkpoint_writes_key(thread_id, stored.ns, stored.checkpoint_id))
            writes = await pipe.execute() if picked else []
        for stored, stored_writes in zip(picked, writes, strict=True):
            yield self._tuple(stored, stored_writes)

    async def refs(self, thread_id: str, ns: str | None = None,
                   sub_threads: bool | None = False) -> list[CheckpointRef]:
        """The thread's checkpoints (``sub_threads``: its sub-threads'; None: both), from
        the hash's field names alone (one ``HKEYS``), in no order."""
        refs = []
        for field in map(_text, await self._redis.hkeys(checkpoints_key(thread_id))):
            ref = CheckpointRef(*parse_checkpoint_field(thread_id, field))
            if ref.checkpoint_id == LATEST or (ns is not None and ref.ns != ns):
                continue
            if sub_threads is None or (ref.thread_id != thread_id) == sub_threads:
                refs.append(ref)
        return refs

    async def stored(self, thread_id: str, ns: str | None = None,
                     sub_threads: bool = False) -> list[Stored]:
        """The thread's checkpoints (or its sub-threads'), undecoded, in no order."""
        return await self.load(thread_id, await self.refs(thread_id, ns, sub_threads))

    async def load(self, thread_id: str, refs: list[CheckpointRef]) -> list[Stored]:
        """``refs`` (of ``thread_id`` or its sub-threads) with what is stored of each."""
        if not refs:
            return []
        fields = [checkpoint_field(r.thread_id, r.ns, r.checkpoint_id) for r in refs]
        found = await self._redis.hmget(checkpoints_key(thread_id), fields)
        return [Stored.unpack(ref, raw) for ref, raw in zip(refs, found, strict=True)
                if raw is not None]

    def _tuple(self, stored: Stored, writes: dict[bytes, bytes]) -> CheckpointTuple:
        thread_id, ns = stored.thread_id, stored.ns
        pending = []
        for field, raw in writes.items():
            task_id, _, idx = _text(field).rpartition(":")
            channel, type_, blob, task_path = ormsgpack.unpackb(raw)
            pending.append((writes_sort_key(task_path, task_id, int(idx)),
                            (task_id, channel, self.serde.loads_typed((type_, blob)))))
        pending.sort(key=lambda item: item[0])
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                     "checkpoint_id": stored.checkpoint_id}},
            checkpoint=self.serde.loads_typed(stored.payload[:2]),
            metadata=self.serde.loads_typed(stored.payload[2:]),
            parent_config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                            "checkpoint_id": stored.parent_id}}
            if stored.parent_id else None,
            pending_writes=[write for _, write in pending],
        )

    # deleting
    async def adelete_thread(self, thread_id: str) -> None:
        """Every checkpoint and write of ``thread_id`` (not of its sub-threads)."""
        refs = await self.refs(thread_id)
        await self.delete(thread_id, refs, pointers={(thread_id, r.ns) for r in refs})

    async def delete(self, thread_id: str, doomed: Iterable[CheckpointRef],
                     pointers: Iterable[tuple[str, str]] = ()) -> int:
        """Drop ``doomed`` (checkpoints of ``thread_id`` or of its sub-threads) with their
        writes, and the latest pointers of ``pointers`` ((thread, ns) pairs), in one round
        trip; how many checkpoints went."""
        doomed = list(doomed)
        fields = [checkpoint_field(r.thread_id, r.ns, r.checkpoint_id) for r in doomed]
        fields += [checkpoint_field(t, ns, LATEST) for t, ns in pointers]
        if not fields:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hdel(checkpoints_key(thread_id), *fields)
            for start in range(0, len(doomed), 500):
                pipe.delete(*[checkpoint_writes_key(r.thread_id, r.ns, r.checkpoint_id)
                              for r in doomed[start:start + 500]])
            await pipe.execute()
        return len(doomed)

    async def point_latest(self, thread_id: str, ns: str, checkpoint_id: str | None) -> None:
        """Make ``checkpoint_id`` the latest of ``thread_id``'s ``ns`` (None: no latest)."""
        field = checkpoint_field(thread_id, ns, LATEST)
        if checkpoint_id is None:
            await self._redis.hdel(checkpoints_key(thread_id), field)
        else:
            await self._redis.hset(checkpoints_key(thread_id), field, checkpoint_id)

    async def write_channels(self, thread_id: str, ns: str, checkpoint_id: str
                             ) -> dict[bytes, tuple[str, str]]:
        """The pending writes of one checkpoint: field -> (task id, channel)."""
        found = await self._redis.hgetall(checkpoint_writes_key(thread_id, ns, checkpoint_id))
        return {field: (_text(field).rpartition(":")[0], ormsgpack.unpackb(raw)[0])
                for field, raw in found.items()}

    async def drop_writes(self, thread_id: str, ns: str, checkpoint_id: str,
                          fields: list[bytes]) -> None:
        if fields:
            await self._redis.hdel(checkpoint_writes_key(thread_id, ns, checkpoint_id),
                                   *fields)

    async def delete_all(self, thread_id: str) -> int:
        """Every checkpoint and write of a thread and of its sub-threads; how many keys
        went."""
        key = checkpoints_key(thread_id)
        keys = [key]
        for field in map(_text, await self._redis.hkeys(key)):
            owner, ns, checkpoint_id = parse_checkpoint_field(thread_id, field)
            if checkpoint_id != LATEST:
                keys.append(checkpoint_writes_key(owner, ns, checkpoint_id))
        deleted = 0
        for start in range(0, len(keys), 500):
            deleted += await self._redis.delete(*keys[start:start + 500])
        return deleted

    def decode(self, stored: Stored) -> Checkpoint:
        return self.serde.loads_typed(stored.payload[:2])


def with_run_metadata(config: RunnableConfig, metadata: CheckpointMetadata
                      ) -> CheckpointMetadata:
    """The checkpoint's metadata plus the run's (``config["metadata"]``: run id, graph,
    attempt), as LangGraph's in-memory and SQL savers store it; so each checkpoint names
    the run that made it, and history filters on it."""
    extra = {k: v for k, v in (config.get("metadata") or {}).items()
             if k not in metadata and not k.startswith("__")
             and isinstance(v, str | int | float | bool)}
    return {**metadata, **extra} if extra else metadata


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
