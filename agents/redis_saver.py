"""The checkpointer: LangGraph checkpoints in one Redis hash per thread, a command a step.

Checkpointing is the hot path of every agent step, and on the way to 10,000 users Redis is
the shared tier. ``langgraph-checkpoint-redis``'s layout stores each checkpoint and each
pending write as a RedisJSON document indexed by RediSearch: ~31 ``JSON.SET`` per run at
~120-160 us of Redis's one command thread each (parsing the document into a JSON tree and
indexing it), most of a run's Redis time. Here the same data is opaque bytes in one hash per
thread, ``ac:{<thread>}:checkpoints`` (fields: ``agents.keys``), holding the thread's
checkpoints and their pending writes, of every namespace and of its specialists'
sub-threads:

- ``<sub-thread suffix>#<ns>#<checkpoint id>`` -> the checkpoint: parent id, run id,
  checkpoint and metadata as the serializer types them;
- ``<suffix>#<ns>#latest`` -> the id of the namespace's latest checkpoint;
- ``!<suffix>#<ns>#<checkpoint id>#<task id>:<idx>`` -> a pending write: channel, value,
  task path; a task's results (one ``aput_writes``) in one field, named by the first;
- ``~<suffix>#<digest>`` -> a message of the (sub-)thread's message lists, or a chunk of
  ``CHUNK`` message digests, stored once.

A channel whose value is a list of messages (``messages``, in our graphs and most users')
is not stored in each checkpoint: each message is stored once, under the digest of its
serialised bytes, when the first checkpoint holding it is saved, and a checkpoint names
each such list: the digests of its full chunks of ``CHUNK`` messages (each chunk stored
once too) and of the messages after them, 8 bytes each, so a checkpoint's size does not
grow with the conversation. Reading one takes up to two ``HMGET`` more (its chunks, then
its messages), for those this process did not store or read lately. So every checkpoint
of a thread can be kept at a cost linear in its turns (``BENCHMARKS.md``, "Redis bytes per
thread, every checkpoint kept"), where a checkpoint holding the whole conversation made it
quadratic. Other channels, and lists of anything else, are stored in the checkpoint as
before. A message or chunk no kept checkpoint names goes with the checkpoints deleted
(``delete``, ``unused_messages``).

A step is one ``HSET`` (a copy: no parsing, no index): inside a run (``holding_writes``) a
task's writes wait for the next checkpoint saved in their namespace and go in its ``HSET``
(LangGraph saves checkpoints in the background, so that one may be the checkpoint they
follow or, when its save lags, the one they belong to); an interrupt's or an error's writes
go at once, with whatever is held. Writes held when a process dies are lost
like the step that made them: that step runs again from the last checkpoint.

The hash carries the thread's hash tag, so a thread and its sub-threads live in one slot of
a Redis Cluster and every write (one fenced Lua call, ``serve_app.runs.fencing``) stays in it. A
thread's checkpoints are found by ``HKEYS``, never by a search: nothing here needs
RediSearch, on one Redis or a cluster. Each message is serialised once in its life
(``MessageCachingSerializer``), the checkpoint once per step, and stored compressed
(``CompressingSerializer``). Within a run, a namespace's latest checkpoint id is read once
(``holding_writes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
import ormsgpack
import zstandard
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

from agents.keys import (
    LATEST,
    MESSAGE,
    WRITE,
    checkpoint_field,
    checkpoint_write_field,
    checkpoints_key,
    message_field,
    parse_checkpoint_field,
    parse_message_field,
)

log = logging.getLogger(__name__)
Command = tuple[Any, ...]
_RESUME_IDX = f":{WRITES_IDX_MAP['__resume__']}"  # how a resume's write field ends


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
        return once_per_message(self._encoded, obj, lambda: orjson.Fragment(orjson.dumps(
            super(MessageCachingSerializer, self)._default_handler(obj),
            default=self._default_handler)))


def once_per_message(cache: dict[int, tuple[tuple, Any]], message: BaseMessage,
                     make: Callable[[], Any]) -> Any:
    """``make()`` for ``message``, computed once per live message object (and again if a
    field LangGraph sets after creation changed); the entry goes with the object."""
    key, fingerprint = id(message), _fingerprint(message)
    cached = cache.get(key)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    value = make()
    if cached is None:
        weakref.finalize(message, cache.pop, key, None)
    cache[key] = (fingerprint, value)
    return value


def packed_id(text: str) -> str | bytes:
    """An id as stored in a checkpoint's record: a UUID (checkpoint and run ids) as its 16
    bytes rather than 36 characters, anything else as it is."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        return text
    return value.bytes if str(value) == text else text


def _id_text(value: str | bytes) -> str:
    return str(uuid.UUID(bytes=value)) if isinstance(value, bytes) else value


def _fingerprint(message: BaseMessage) -> tuple:
    return (message.id, message.name, len(message.content),
            len(getattr(message, "tool_calls", None) or ()))


def is_message_list(value: Any) -> bool:
    """Whether a channel's value is stored as message references (a non-empty list of
    messages); anything else is stored in the checkpoint itself."""
    return isinstance(value, list) and bool(value) and \
        all(isinstance(item, BaseMessage) for item in value)


DIGEST = 8  # bytes of a message's digest: unique within a thread's messages
CHUNK = 32  # a message list's digests, this many at a time, are stored once as a chunk
HSET_FIELDS = 1000  # fields per HSET (and HDEL) of a write: a Lua script (fencing) unpacks
# a command's words onto its stack, which holds ~8,000


def split_digests(blob: bytes) -> list[bytes]:
    return [blob[i:i + DIGEST] for i in range(0, len(blob), DIGEST)]


def chunk_digest(content: bytes) -> bytes:
    return hashlib.blake2b(content, digest_size=DIGEST, person=b"chunk").digest()


class CompressingSerializer(MessageCachingSerializer):
    """Values of ``COMPRESS_FROM`` bytes or more stored zstd-compressed with a dictionary
    primed with what every checkpoint, metadata and message repeats (``PRIMER``; their type
    marked ``+zstd-p1``), when that is smaller; values stored plain, or compressed without
    the dictionary (``+zstd``, as before), are read as before. Once a checkpoint names its
    messages instead of holding them (``LeanRedisSaver``), it is ~1.2 KB of JSON with its
    metadata, most of it LangGraph's key names and version counters: ~310 B primed, against
    ~620 B compressed as before (a supervisor thread's checkpoints), for a few us a value."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        type_, data = super().dumps_typed(obj)
        if len(data) < COMPRESS_FROM:
            return type_, data
        packed = _zstd().compressor.compress(data)
        return (type_ + PRIMED, packed) if len(packed) < len(data) else (type_, data)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, blob = data
        if type_.endswith(PRIMED):
            data = (type_[:-len(PRIMED)], _zstd().decompressor.decompress(blob))
        elif type_.endswith(COMPRESSED):
            data = (type_[:-len(COMPRESSED)], _zstd().plain.decompress(blob))
        return super().loads_typed(data)


COMPRESSED = "+zstd"  # compressed without a dictionary (stored before PRIMED); read only
PRIMED = "+zstd-p1"  # compressed with PRIMER: never change PRIMER, add a new marker
COMPRESS_FROM = 64  # bytes; smaller values gain nothing
# What the dictionary starts from (zstd's raw content dictionary: any substring of it is a
# match): a checkpoint, its metadata and messages as LangGraph and LangChain write them.
_VERSION = '"00000000000000000000000000000001.0.'
PRIMER = "".join([
    '{"v":4,"ts":"2026-01-01T00:00:00.000000+00:00","id":"1f000000-0000-6000-8000-',
    '000000000000","channel_values":{"steps":0,"assignments":[],"__start__":{"messages":[{',
    '"role":"user","content":""}]},"__pregel_tasks":[]},"channel_versions":{"__start__":',
    _VERSION, '","messages":', _VERSION, '","branch:to:supervisor":', _VERSION,
    '","assignments":', _VERSION, '","steps":', _VERSION, '","__pregel_tasks":', _VERSION,
    '"},"versions_seen":{"__input__":{},"__start__":{"__start__":', _VERSION,
    '"},"supervisor":{"branch:to:supervisor":', _VERSION, '"},"worker":{}},',
    '"updated_channels":["__start__"]}{"source":"loop","step":1,"parents":{},"run_id":"',
    '","thread_id":"","graph_id":"supervisor","assistant_id":"","run_attempt":1}',
    '{"lc":1,"type":"constructor","id":["langchain","schema","messages","HumanMessage"],',
    '"kwargs":{"content":"","type":"human","id":""}}{"lc":1,"type":"constructor","id":',
    '["langchain","schema","messages","AIMessage"],"kwargs":{"content":"","type":"ai",',
    '"name":"","id":"","tool_calls":[{"name":"","args":{},"id":"","type":"tool_call"}],',
    '"invalid_tool_calls":[],"usage_metadata":{"input_tokens":0,"output_tokens":0,',
    '"total_tokens":0},"response_metadata":{"finish_reason":"stop","model_name":""}}}',
    '{"lc":1,"type":"constructor","id":["langchain","schema","messages","ToolMessage"],',
    '"kwargs":{"content":"","type":"tool","id":"","tool_call_id":"","status":"success"}}',
]).encode()
_ZSTD = threading.local()  # (de)compressor objects are not thread-safe; each thread its own


def _zstd() -> Any:
    if not hasattr(_ZSTD, "compressor"):
        primer = zstandard.ZstdCompressionDict(PRIMER,
                                               dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        _ZSTD.compressor = zstandard.ZstdCompressor(level=3, dict_data=primer,
                                                    write_dict_id=False)
        _ZSTD.decompressor = zstandard.ZstdDecompressor(dict_data=primer)
        _ZSTD.plain = zstandard.ZstdDecompressor()
    return _ZSTD


@dataclass(frozen=True)
class CheckpointRef:
    """Where a checkpoint is: its (sub-)thread, namespace and id, and its writes' fields."""

    thread_id: str
    ns: str
    checkpoint_id: str
    writes: tuple[str, ...] = ()

    def fields(self) -> list[str]:
        return [checkpoint_field(self.thread_id, self.ns, self.checkpoint_id), *self.writes]

    @property
    def resumed(self) -> bool:
        """Whether an answer to an interrupt (a resume) was written on it."""
        return any(name.endswith(_RESUME_IDX) for name in self.writes)


@dataclass(frozen=True)
class Stored(CheckpointRef):
    """One checkpoint as the hash holds it, decoded only as far as asked."""

    parent_id: str = ""
    run_id: str = ""
    payload: tuple = ()  # checkpoint type + bytes, metadata type + bytes
    lists: Mapping[str, Any] = field(default_factory=dict)  # channel -> [chunks, tail]

    @classmethod
    def unpack(cls, ref: CheckpointRef, raw: bytes) -> Stored:
        parent_id, run_id, *payload = ormsgpack.unpackb(raw)
        return cls(ref.thread_id, ref.ns, ref.checkpoint_id, ref.writes, _id_text(parent_id),
                   _id_text(run_id), tuple(payload[:4]), payload[4] if len(payload) > 4 else {})

    def parts(self) -> dict[str, tuple[list[bytes], list[bytes]]]:
        """Each message list as the digests of its chunks (its first ``CHUNK`` messages,
        the next ``CHUNK``...) and of the messages after them."""
        parts = {}
        for channel, value in self.lists.items():
            chunks, tail = value if isinstance(value, list) else (b"", value)
            parts[channel] = (split_digests(chunks), split_digests(tail))
        return parts


@dataclass
class _Held:
    """Writes of one (sub-)thread namespace waiting for its next checkpoint's ``HSET``."""

    config: RunnableConfig
    fields: list[Any] = field(default_factory=list)


_HOLDING: ContextVar[dict[tuple[str, str], _Held] | None] = ContextVar(
    "checkpoint_writes_held", default=None)
# Within a run: the latest checkpoint id of each (thread, namespace) as last read or saved.
_LATEST: ContextVar[dict[tuple[str, str], str | None] | None] = ContextVar(
    "checkpoint_latest_known", default=None)
# Within a run: checkpoints read before it started ((thread, ns, id) -> the replies of
# ``checkpoint_in``), each taken by the first read of it.
_READ: ContextVar[dict[tuple[str, str, str], Sequence[Any]] | None] = ContextVar(
    "checkpoint_read_before", default=None)


class Recent(OrderedDict):
    """The ``size`` entries last kept; changed under a lock (a process may run graphs on
    event loops of several threads)."""

    def __init__(self, size: int = 4096):
        super().__init__()
        self.size = size
        self._lock = threading.Lock()

    def keep(self, key: Any, value: Any) -> Any:
        with self._lock:
            self[key] = value
            self.move_to_end(key)
            while len(self) > self.size:
                self.popitem(last=False)
        return value

    def forget(self, keys: Iterable[Any] = (), where: Callable[[Any], bool] | None = None
               ) -> None:
        """Drop ``keys``, and every key ``where`` accepts."""
        with self._lock:
            for key in [*keys, *(key for key in self if where and where(key))]:
                self.pop(key, None)


# In this process: what checkpoints lately saved or read hold ((thread, ns, id) -> their
# ``held_by``), so that a checkpoint stores only what its parent did not;
# and chunks and messages lately stored or read (digest -> stored bytes: content-addressed,
# so never stale), so that a read asks Redis only for the others (a thread's next run on
# the replica of its last one: none); and messages lately read, decoded (digest -> the
# message; each read gets a copy, ~6x cheaper than decoding again: a thread's every turn
# reads its whole history, bench/thread_length.py).
_HELD = Recent(1024)
_CHUNKS = Recent()
_MESSAGES = Recent(16384)
_DECODED = Recent(16384)


def held_by(stored: Stored) -> frozenset[bytes]:
    """What a checkpoint names itself: its chunks and the messages after them (a chunk
    stands for its messages: a few dozen digests for a long conversation)."""
    return frozenset(d for chunks, tail in stored.parts().values() for d in (*chunks, *tail))


def _forget_latest() -> None:
    """Checkpoints deleted or re-pointed within a run: read them (and the latest) again."""
    for known in (_LATEST.get(), _READ.get()):
        if known is not None:
            known.clear()


def _forget_held(doomed: Iterable[CheckpointRef] = (), thread_id: str | None = None) -> None:
    """Checkpoints deleted (``thread_id``: all of a thread's and its sub-threads'): what
    they held may be gone, so a child of theirs stores it again."""
    root = thread_id.partition("/")[0] if thread_id is not None else None
    _HELD.forget([(ref.thread_id, ref.ns, ref.checkpoint_id) for ref in doomed],
                 (lambda where: where[0].partition("/")[0] == root) if root else None)


class LeanRedisSaver(BaseCheckpointSaver[str]):
    """LangGraph's checkpointer interface over the hash described above.

    ``ttl_minutes`` expires a thread's checkpoints that long after their last write. A
    subclass decides how a write's commands reach Redis (``_write``: a pipeline here, a
    fenced script in ``serve_app.runs.fencing``).
    """

    def __init__(self, redis_client: Any, ttl_minutes: float | None = None):
        super().__init__(serde=CompressingSerializer())
        self._redis = redis_client
        self.ttl_minutes = ttl_minutes
        self._messages: dict[int, tuple[tuple, tuple[bytes, str, bytes]]] = {}

    # writing
    @contextlib.asynccontextmanager
    async def holding_writes(self, latest: Mapping[tuple[str, str], str | None] | None = None,
                             read: Mapping[tuple[str, str, str], Sequence[Any]] | None = None
                             ) -> AsyncIterator[None]:
        """Within (one run of a graph that holds its thread, in this task and those it
        starts), a task's writes go with the next checkpoint's ``HSET``; what is held at the
        end goes then. Nothing else writes the thread meanwhile, so each namespace's latest
        checkpoint is read once and then known from the run's own saves (``latest``: what
        the caller read already, (thread, ns) -> id or None; ``read``: checkpoints the
        caller read already, (thread, ns, id) -> the replies of ``checkpoint_in``'s reads,
        each used once: the next read of it sees what the run wrote since)."""
        held: dict[tuple[str, str], _Held] = {}
        outer, outer_latest, outer_read = _HOLDING.get(), _LATEST.get(), _READ.get()
        _HOLDING.set(held)
        _LATEST.set(dict(latest or {}))
        _READ.set(dict(read or {}))
        try:
            yield
        finally:
            _HOLDING.set(outer)  # not reset(): an async generator may end in another context
            _LATEST.set(outer_latest)
            _READ.set(outer_read)
            for slot in list(held):
                waiting = held.pop(slot)
                try:
                    await asyncio.shield(self._hset(waiting.config, waiting.fields))
                except Exception as exc:  # lost like a crash's: those steps run again
                    log.warning("writes of %s not saved: %s", slot[0], exc)

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
        checkpoint, lists, messages, holds = self._split(
            thread_id, checkpoint, _HELD.get((thread_id, ns, parent_id)))
        record = [packed_id(parent_id), packed_id(run_id), *self.serde.dumps_typed(checkpoint),
                  *self.serde.dumps_typed(metadata)]
        held = (_HOLDING.get() or {}).pop((thread_id, ns), None)
        await self._hset(config, [*(held.fields if held else ()), *messages,
                                  checkpoint_field(thread_id, ns, checkpoint_id),
                                  ormsgpack.packb([*record, lists] if lists else record),
                                  checkpoint_field(thread_id, ns, LATEST), checkpoint_id])
        _HELD.keep((thread_id, ns, checkpoint_id), holds)
        if (known := _LATEST.get()) is not None:
            known[(thread_id, ns)] = checkpoint_id
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                 "checkpoint_id": checkpoint_id}}

    def _split(self, thread_id: str, checkpoint: Checkpoint, parent: frozenset[bytes] | None
               ) -> tuple[Checkpoint, dict[str, list[bytes]], list[Any], frozenset[bytes]]:
        """The checkpoint without its message lists; the lists as references (channel ->
        [digests of its full chunks, digests of the messages after them], 8 bytes each:
        constant in a list's length but for one in ``CHUNK`` messages); the fields to store
        (messages and chunks the parent checkpoint did not hold; ``parent``: its
        ``held_by``, if this process saved or read it; without, they are stored again: the
        same bytes under the same fields); and this checkpoint's ``held_by``."""
        values = checkpoint.get("channel_values") or {}
        lists = {channel: value for channel, value in values.items() if is_message_list(value)}
        if not lists:
            return checkpoint, {}, [], frozenset()
        known, fields, refs, holds = set(parent or ()), [], {}, set()

        def store(digest: bytes, value: Callable[[], bytes], recent: Recent) -> None:
            if digest not in known:
                known.add(digest)
                fields.extend((message_field(thread_id, digest.hex()),
                               recent.keep(digest, value())))

        for channel, messages in lists.items():
            typed = [self._message(message) for message in messages]
            full = len(typed) - len(typed) % CHUNK
            chunks = []
            for start in range(0, len(typed), CHUNK):
                group = typed[start:start + CHUNK]
                content = b"".join(digest for digest, _, _ in group)
                chunk = chunk_digest(content) if start < full else None
                if chunk not in known:  # a chunk held: so are its messages
                    for digest, type_, data in group:
                        store(digest, lambda t=type_, d=data: ormsgpack.packb([t, d]),
                              _MESSAGES)
                if chunk is not None:
                    store(chunk, lambda c=content: c, _CHUNKS)
                    chunks.append(chunk)
            tail = [digest for digest, _, _ in typed[full:]]
            refs[channel] = [b"".join(chunks), b"".join(tail)]
            holds.update(chunks, tail)
        rest = {channel: value for channel, value in values.items() if channel not in lists}
        return {**checkpoint, "channel_values": rest}, refs, fields, frozenset(holds)

    def _message(self, message: BaseMessage) -> tuple[bytes, str, bytes]:
        """A message's digest and stored form, computed once per message object."""
        def make() -> tuple[bytes, str, bytes]:
            type_, data = self.serde.dumps_typed(message)
            digest = hashlib.blake2b(type_.encode() + b"\0" + data, digest_size=DIGEST)
            return digest.digest(), type_, data
        return once_per_message(self._messages, message, make)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        if not writes:
            return
        configurable = config["configurable"]
        thread_id, ns = configurable["thread_id"], configurable.get("checkpoint_ns", "")
        checkpoint_id = configurable["checkpoint_id"]
        fields: list[Any] = []
        regular = []
        for index, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, index)
            typed = [channel, *self.serde.dumps_typed(value)]
            if idx < 0:  # an error, interrupt, resume...: a field each, named by its kind
                fields += [checkpoint_write_field(thread_id, ns, checkpoint_id, task_id, idx),
                           ormsgpack.packb([*typed, task_path])]
            else:
                regular.append([idx, *typed])
        if regular:  # the task's results: one field (a field costs Redis ~70 B besides)
            fields += [checkpoint_write_field(thread_id, ns, checkpoint_id, task_id,
                                              regular[0][0]),
                       ormsgpack.packb([task_path, regular])]
        holding = _HOLDING.get()
        if holding is None:
            return await self._hset(config, fields)
        held = holding.setdefault((thread_id, ns), _Held(config))
        held.fields += fields
        if any(channel in WRITES_IDX_MAP for channel, _ in writes):  # interrupt, error...
            del holding[(thread_id, ns)]
            await self._hset(config, held.fields)

    async def _hset(self, config: RunnableConfig, fields: list[Any]) -> None:
        """``fields`` (name, value, ...) in one write, as ``HSET``s of at most ``HSET_FIELDS``
        fields (a checkpoint whose parent this process does not know stores every message
        again, and a Lua script unpacks a command's words onto its stack)."""
        key = checkpoints_key(config["configurable"]["thread_id"])
        commands: list[Command] = [("HSET", key, *fields[start:start + 2 * HSET_FIELDS])
                                   for start in range(0, len(fields), 2 * HSET_FIELDS)]
        if self.ttl_minutes is not None:
            commands.append(("EXPIRE", key, int(self.ttl_minutes * 60)))
        await self._write(config, commands)

    async def _write(self, config: RunnableConfig, commands: list[Command]) -> None:
        """One pipeline. A cancelled run still stores what it was writing."""
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        await asyncio.shield(pipe.execute())

    def get_next_version(self, current: str | None, channel: None) -> str:
        """A counter, as ``BaseCheckpointSaver``'s own, as a zero-padded string as LangGraph's
        other savers write it (so it compares with versions they wrote, ``<counter>.<random
        tie-breaker>``, read on). The tie-breaker keys their per-version value blobs; each
        checkpoint here holds its values, so it would only cost ~60 B of entropy a
        checkpoint."""
        number = 0 if current is None else int(str(current).split(".")[0])
        return f"{number + 1:032}"

    # reading
    async def alatest_checkpoint_id(self, thread_id: str, checkpoint_ns: str = "") -> str | None:
        """The id of a thread's latest checkpoint: one ``HGET`` (none if the run knows it),
        nothing decoded."""
        known = _LATEST.get()
        if known is not None and (thread_id, checkpoint_ns) in known:
            return known[(thread_id, checkpoint_ns)]
        latest = self.latest_of(await self._redis.hget(*_latest_field(thread_id, checkpoint_ns)))
        if known is not None:
            known[(thread_id, checkpoint_ns)] = latest
        return latest

    @staticmethod
    def latest_in(pipe: Any, thread_id: str, checkpoint_ns: str = "") -> None:
        """``alatest_checkpoint_id``'s read as one command of the caller's pipeline
        (``latest_of`` reads its reply)."""
        pipe.hget(*_latest_field(thread_id, checkpoint_ns))

    @staticmethod
    def latest_of(reply: bytes | str | None) -> str | None:
        return _text(reply) if reply else None

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id, ns = configurable["thread_id"], configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config) or \
            await self.alatest_checkpoint_id(thread_id, ns)
        if not checkpoint_id:
            return None
        ref = CheckpointRef(thread_id, ns, checkpoint_id)
        key = checkpoints_key(thread_id)
        read = (_READ.get() or {}).pop((thread_id, ns, checkpoint_id), None)
        if read is None:
            async with self._redis.pipeline(transaction=False) as pipe:
                self.checkpoint_in(pipe, thread_id, checkpoint_id, ns)
                read = await pipe.execute()
        raw, (cursor, writes) = read
        if raw is None:
            return None
        while cursor:
            cursor, more = await self._redis.hscan(key, cursor, match=_writes_of(ref),
                                                   count=1000)
            writes.update(more)
        stored = Stored.unpack(ref, raw)
        (lists,) = await self._expand(thread_id, [stored])
        found = self._tuple(stored, writes, lists,
                            await self._read_messages(thread_id, [stored], [lists]))
        _HELD.keep((thread_id, ns, checkpoint_id), held_by(stored))
        return found

    @staticmethod
    def checkpoint_in(pipe: Any, thread_id: str, checkpoint_id: str, ns: str = "") -> None:
        """``aget_tuple``'s reads of a checkpoint and its writes as two commands of the
        caller's pipeline; their replies, handed to ``holding_writes(read=...)``, spare
        the run's first read of it a round trip."""
        key = checkpoints_key(thread_id)
        pipe.hget(key, checkpoint_field(thread_id, ns, checkpoint_id))
        pipe.hscan(key, 0, match=_writes_of(CheckpointRef(thread_id, ns, checkpoint_id)),
                   count=1000)

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
        refs = [r for r in await self.refs(thread_id, configurable.get("checkpoint_ns"))
                if (not wanted or r.checkpoint_id == wanted)
                and (not before_id or r.checkpoint_id < before_id)]
        refs.sort(key=lambda r: r.checkpoint_id, reverse=True)
        key = checkpoints_key(thread_id)
        for start in range(0, len(refs), 50):  # a page at a time: history may be long
            page = refs[start:start + 50]
            async with self._redis.pipeline(transaction=False) as pipe:
                for ref in page:
                    pipe.hmget(key, ref.fields())
                found = await pipe.execute()
            listed = []
            for ref, (raw, *writes) in zip(page, found, strict=True):
                if raw is None:
                    continue
                stored = Stored.unpack(ref, raw)
                if filter:
                    metadata = self.serde.loads_typed(stored.payload[2:])
                    if any(metadata.get(k) != v for k, v in filter.items()):
                        continue
                listed.append((stored, dict(zip(ref.writes, writes, strict=True))))
                if limit is not None and len(listed) >= limit:
                    break
            lists = await self._expand(thread_id, [s for s, _ in listed])
            messages = await self._read_messages(thread_id, [s for s, _ in listed], lists)
            for (stored, writes), its_lists in zip(listed, lists, strict=True):
                yield self._tuple(stored, writes, its_lists, messages)
                if limit is not None:
                    limit -= 1
                    if limit <= 0:
                        return

    async def refs(self, thread_id: str, ns: str | None = None,
                   sub_threads: bool | None = False) -> list[CheckpointRef]:
        """The thread's checkpoints (``sub_threads``: its sub-threads'; None: both) with
        their writes' fields, from the hash's field names alone (one ``HKEYS``)."""
        return self.refs_in(thread_id, await self._redis.hkeys(checkpoints_key(thread_id)),
                            ns, sub_threads)

    @staticmethod
    def refs_in(thread_id: str, names: Iterable[str | bytes], ns: str | None = None,
                sub_threads: bool | None = False) -> list[CheckpointRef]:
        """``refs`` from the field names of the thread's hash, read by the caller."""
        checkpoints: dict[tuple[str, str, str], list[str]] = {}
        for name in map(_text, names):
            if name.startswith(MESSAGE):
                continue
            owner, field_ns, checkpoint_id, task = parse_checkpoint_field(thread_id, name)
            if checkpoint_id == LATEST or (ns is not None and field_ns != ns):
                continue
            if sub_threads is None or (owner != thread_id) == sub_threads:
                writes = checkpoints.setdefault((owner, field_ns, checkpoint_id), [])
                if task:
                    writes.append(name)
        return [CheckpointRef(*where, tuple(writes)) for where, writes in checkpoints.items()]

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

    async def _expand(self, thread_id: str, found: list[Stored]
                      ) -> list[dict[str, list[bytes]]]:
        """Each of ``found``'s message lists as its messages' digests (channel ->
        digests), its chunks read (one ``HMGET``) unless this process knows them."""
        known: dict[bytes, bytes] = {}
        missing: dict[bytes, str] = {}
        for stored in found:
            for chunks, _ in stored.parts().values():
                for chunk in chunks:
                    if (content := _CHUNKS.get(chunk)) is not None:
                        known[chunk] = content
                    else:
                        missing[chunk] = stored.thread_id
        if missing:
            raws = await self._redis.hmget(checkpoints_key(thread_id), [
                message_field(owner, chunk.hex()) for chunk, owner in missing.items()])
            for (chunk, owner), raw in zip(missing.items(), raws, strict=True):
                if raw is None:
                    raise LookupError(f"chunk {chunk.hex()} of thread {owner!r} is not stored")
                known[chunk] = _CHUNKS.keep(chunk, raw)
        return [{channel: [d for chunk in chunks for d in split_digests(known[chunk])] + tail
                 for channel, (chunks, tail) in stored.parts().items()} for stored in found]

    async def _read_messages(self, thread_id: str, found: list[Stored],
                             lists: list[dict[str, list[bytes]]]
                             ) -> dict[tuple[str, bytes], BaseMessage]:
        """The messages that ``found`` (checkpoints of ``thread_id`` or its sub-threads)
        name (``lists``: as ``_expand`` gave them), each read (unless this process knows
        it) and decoded once: (owner, digest) -> message."""
        wanted = list(dict.fromkeys((s.thread_id, d) for s, its in zip(found, lists, strict=True)
                                    for digests in its.values() for d in digests))
        raw = {digest: _MESSAGES.get(digest) for _, digest in wanted}
        missing = [(owner, digest) for owner, digest in wanted if raw[digest] is None]
        if missing:
            replies = await self._redis.hmget(checkpoints_key(thread_id), [
                message_field(owner, digest.hex()) for owner, digest in missing])
            for (owner, digest), reply in zip(missing, replies, strict=True):
                if reply is None:
                    raise LookupError(f"message {digest.hex()} of thread {owner!r} is not "
                                      "stored")
                raw[digest] = _MESSAGES.keep(digest, reply)
        messages = {}
        for owner, digest in wanted:
            type_, data = ormsgpack.unpackb(raw[digest])
            if (decoded := _DECODED.get(digest)) is None:
                decoded = _DECODED.keep(digest, self.serde.loads_typed((type_, data)))
            message = messages[(owner, digest)] = decoded.model_copy(deep=True)
            # known stored: the run's next checkpoint need not serialise it again
            once_per_message(self._messages, message, lambda d=digest, t=type_, b=data:
                             (d, t, b))
        return messages

    def _tuple(self, stored: Stored, writes: dict[Any, bytes | None],
               lists: dict[str, list[bytes]],
               messages: Mapping[tuple[str, bytes], BaseMessage]) -> CheckpointTuple:
        thread_id, ns = stored.thread_id, stored.ns
        pending = []
        for name, raw in writes.items():
            if raw is None:
                continue
            task_id, _, idx = parse_checkpoint_field(thread_id, _text(name))[3].rpartition(":")
            task_path, found = _unpack_writes(raw, int(idx))
            pending += [(writes_sort_key(task_path, task_id, i),
                         (task_id, channel, self.serde.loads_typed((type_, blob))))
                        for i, channel, type_, blob in found]
        pending.sort(key=lambda item: item[0])
        checkpoint = self.decode(stored)
        for channel, digests in lists.items():
            checkpoint["channel_values"][channel] = [messages[(thread_id, d)] for d in digests]
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                     "checkpoint_id": stored.checkpoint_id}},
            checkpoint=checkpoint,
            metadata=self.serde.loads_typed(stored.payload[2:]),
            parent_config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                            "checkpoint_id": stored.parent_id}}
            if stored.parent_id else None,
            pending_writes=[write for _, write in pending],
        )

    def decode(self, stored: Stored) -> Checkpoint:
        """The checkpoint without its message lists (``aget_tuple`` reads those too)."""
        return self.serde.loads_typed(stored.payload[:2])

    # deleting
    async def adelete_thread(self, thread_id: str) -> None:
        """Every checkpoint, write and message of ``thread_id`` (not of its sub-threads)."""
        names = await self._redis.hkeys(checkpoints_key(thread_id))
        refs = self.refs_in(thread_id, names)
        await self.delete(thread_id, refs, pointers={(thread_id, r.ns) for r in refs},
                          names=names)

    async def delete(self, thread_id: str, doomed: Iterable[CheckpointRef],
                     pointers: Iterable[tuple[str, str]] = (),
                     names: Sequence[str | bytes] | None = None) -> int:
        """Drop ``doomed`` (checkpoints of ``thread_id`` or of its sub-threads, as ``refs``
        names them) with their writes and the messages no other checkpoint names, and the
        latest pointers of ``pointers`` ((thread, ns) pairs); how many checkpoints went.
        ``names``: the hash's field names, if read already."""
        doomed = list(doomed)
        messages = await self.unused_messages(thread_id, doomed, names)
        for command in self.deletion(thread_id, doomed, pointers, messages):
            await self._redis.execute_command(*command)
        return len(doomed)

    @staticmethod
    def deletion(thread_id: str, doomed: Iterable[CheckpointRef],
                 pointers: Iterable[tuple[str, str]] = (),
                 messages: Iterable[str] = ()) -> list[Command]:
        """What ``delete`` sends, for a caller that sends it with its own commands
        (``messages``: the fields ``unused_messages`` found)."""
        _forget_latest()
        doomed = list(doomed)
        _forget_held(doomed)
        fields = [name for ref in doomed for name in ref.fields()]
        fields += [checkpoint_field(t, ns, LATEST) for t, ns in pointers]
        fields += messages
        return [("HDEL", checkpoints_key(thread_id), *fields[start:start + HSET_FIELDS])
                for start in range(0, len(fields), HSET_FIELDS)]

    async def unused_messages(self, thread_id: str, doomed: Sequence[CheckpointRef],
                              names: Sequence[str | bytes] | None = None) -> list[str]:
        """The message fields that no checkpoint but ``doomed`` names, of the (sub-)threads
        ``doomed`` has checkpoints of: all of theirs when they go whole (no read), else
        those the checkpoints they keep do not name (their checkpoints read, not decoded).
        Called while the caller holds the thread: nothing writes it meanwhile."""
        owners = {ref.thread_id for ref in doomed}
        if not owners:
            return []
        if names is None:
            names = await self._redis.hkeys(checkpoints_key(thread_id))
        going = {(r.thread_id, r.ns, r.checkpoint_id) for r in doomed}
        kept = [r for r in self.refs_in(thread_id, names, sub_threads=None)
                if r.thread_id in owners and (r.thread_id, r.ns, r.checkpoint_id) not in going]
        stored = await self.load(thread_id, kept)
        used = {message_field(s.thread_id, d.hex())
                for s, lists in zip(stored, await self._expand(thread_id, stored), strict=True)
                for d in (*held_by(s), *(d for digests in lists.values() for d in digests))}
        return [name for name in map(_text, names) if name.startswith(MESSAGE)
                and name not in used and parse_message_field(thread_id, name)[0] in owners]

    async def delete_all(self, thread_id: str) -> int:
        """Every checkpoint and write of a thread and of its sub-threads (1: there were
        some, 0: none)."""
        _forget_latest()
        _forget_held(thread_id=thread_id)
        return await self._redis.delete(checkpoints_key(thread_id))

    async def point_latest(self, thread_id: str, ns: str, checkpoint_id: str | None) -> None:
        """Make ``checkpoint_id`` the latest of ``thread_id``'s ``ns`` (None: no latest)."""
        _forget_latest()
        key, name = _latest_field(thread_id, ns)
        if checkpoint_id is None:
            await self._redis.hdel(key, name)
        else:
            await self._redis.hset(key, name, checkpoint_id)

    async def write_channels(self, ref: CheckpointRef) -> dict[str, tuple[str, str]]:
        """The pending writes of one checkpoint: field -> (task id, channel)."""
        found = await self._redis.hmget(checkpoints_key(ref.thread_id), ref.writes) \
            if ref.writes else []
        return {name: (parse_checkpoint_field(ref.thread_id, name)[3].rpartition(":")[0],
                       _unpack_writes(raw, 0)[1][0][1])
                for name, raw in zip(ref.writes, found, strict=True) if raw is not None}

    async def drop_writes(self, thread_id: str, fields: list[str]) -> None:
        if fields:
            await self._redis.hdel(checkpoints_key(thread_id), *fields)


def _unpack_writes(raw: bytes, idx: int) -> tuple[str, list[tuple[int, str, str, bytes]]]:
    """A write field's task path and writes (index, channel, type, bytes): one for an
    error's, interrupt's or resume's field (or any written before a task's results were
    packed in one field; ``idx``: its field's), else the results of one ``aput_writes``."""
    item = ormsgpack.unpackb(raw)
    if len(item) == 4:
        channel, type_, blob, task_path = item
        return task_path, [(idx, channel, type_, blob)]
    task_path, writes = item
    return task_path, [tuple(write) for write in writes]


def _latest_field(thread_id: str, ns: str) -> tuple[str, str]:
    """(hash, field) of the pointer to a namespace's latest checkpoint."""
    return checkpoints_key(thread_id), checkpoint_field(thread_id, ns, LATEST)


def _writes_of(ref: CheckpointRef) -> str:
    """The ``HSCAN`` pattern of a checkpoint's writes' fields."""
    where = checkpoint_field(ref.thread_id, ref.ns, ref.checkpoint_id)
    return WRITE + _GLOB_SPECIAL.sub(r"\\\1", where) + "#*"


_GLOB_SPECIAL = re.compile(r"([*?[\]\\])")


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
