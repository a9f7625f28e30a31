"""Threads and runs as records in Redis, so every replica sees the same ones.

Each record is a Redis hash with one JSON value per field, so writers change only the
fields they own (``HSET``), never a stale copy of the whole record. Status changes are
compare-and-set (a small Lua script): a run's status moves only from the statuses the
writer expects and only for the attempt it knows, so a sweeper re-queuing a run cannot
overwrite the ``success`` its first attempt just wrote, and a stale attempt cannot end a
run its successor owns. Key names are in ``serve_app.keys``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis

from serve_app.keys import (
    ALL_THREADS,
    events_key,
    run_key,
    run_scoped_keys,
    thread_key,
    thread_runs_key,
)

RunStatus = Literal["pending", "running", "success", "error", "timeout", "interrupted"]
ThreadStatus = Literal["idle", "busy", "interrupted", "error"]
TERMINAL: frozenset[str] = frozenset({"success", "error", "timeout", "interrupted"})
ACTIVE: frozenset[str] = frozenset({"pending", "running"})

# KEYS[1]: the record; ARGV[1]: allowed current statuses, JSON-encoded, comma-joined ('' =
# any); ARGV[2]: the attempt it must be at ('' = any); ARGV[3]: '1' to return the record
# after (else 1); then field/value pairs to set.
_SET_IF = """
local now = redis.call('HMGET', KEYS[1], 'status', 'attempt')
local status = now[1]
if not status then return false end
if ARGV[1] ~= '' and not string.find(',' .. ARGV[1] .. ',', ',' .. status .. ',', 1, true)
then return false end
if ARGV[2] ~= '' and now[2] ~= ARGV[2] then return false end
if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
if ARGV[3] == '1' then return redis.call('HGETALL', KEYS[1]) end
return 1
"""

# KEYS[1]: the record; ARGV: field/value pairs. Returns the stored record and whether it
# is new.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('HGETALL', KEYS[1])} end
redis.call('HSET', KEYS[1], unpack(ARGV))
return {1, redis.call('HGETALL', KEYS[1])}
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def encode(fields: dict[str, Any]) -> dict[str, str]:
    """A record's fields for ``HSET``: each value as JSON."""
    return {name: json.dumps(value) for name, value in fields.items()}


def flat(fields: dict[str, Any]) -> list[str]:
    """Field/value pairs as a script's arguments."""
    return [part for pair in encode(fields).items() for part in pair]


def decode(pairs: dict | list | None) -> dict[str, Any] | None:
    """A record from ``HGETALL`` (a dict from redis-py, a flat list from a script)."""
    if not pairs:
        return None
    if isinstance(pairs, list):
        pairs = dict(zip(pairs[::2], pairs[1::2], strict=True))
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in pairs.items()}


def _statuses(allowed: Iterable[str]) -> str:
    return ",".join(json.dumps(s) for s in allowed)


class Records:
    """CRUD of thread and run records; graph state itself lives in the checkpointer."""

    def __init__(self, redis: Redis):
        self.redis = redis
        self._set_if = redis.register_script(_SET_IF)
        self._create = redis.register_script(_CREATE)

    async def _update(self, key: str, fields: dict[str, Any], allowed: Iterable[str] = (),
                      attempt: int | None = None, returning: bool = True
                      ) -> dict[str, Any] | None:
        """Set ``fields`` if the record exists, is in an ``allowed`` status (any if empty)
        and at ``attempt`` (any if None); the record after (``{}`` unless ``returning``:
        a writer that does not need it spares Redis reading it back), or None if refused."""
        args = [_statuses(allowed), "" if attempt is None else json.dumps(attempt),
                "1" if returning else "0", *flat({**fields, "updated_at": now_iso()})]
        stored = await self._set_if(keys=[key], args=args)
        if stored is None:
            return None
        return decode(stored) if returning else {}

    async def _create_record(self, key: str, record: dict[str, Any]
                             ) -> tuple[dict[str, Any], bool]:
        created, stored = await self._create(keys=[key], args=flat(record))
        return decode(stored), bool(created)

    # threads
    async def get_thread(self, thread_id: str) -> dict[str, Any] | None:
        return decode(await self.redis.hgetall(thread_key(thread_id)))

    async def create_thread(
        self, thread_id: str | None = None, metadata: dict[str, Any] | None = None,
        ttl: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create unless it exists; returns (record, created)."""
        thread_id = thread_id or str(uuid.uuid4())
        stamp = now_iso()
        fields = {"thread_id": thread_id, "created_at": stamp, "updated_at": stamp,
                  "metadata": metadata or {}, "status": "idle"}
        if ttl is not None:
            fields["ttl"] = ttl
        record, created = await self._create_record(thread_key(thread_id), fields)
        if created:
            await self.redis.zadd(ALL_THREADS, {thread_id: time.time()})
        return record, created

    async def update_thread(self, thread_id: str, returning: bool = True, **fields: Any
                            ) -> dict[str, Any] | None:
        return await self._update(thread_key(thread_id), fields, returning=returning)

    async def search_threads(self, limit: int, offset: int, metadata: dict[str, Any] | None,
                             status: str | None = None,
                             where: Callable[[dict[str, Any]], bool] | None = None
                             ) -> list[dict[str, Any]]:
        """Newest first; a filter reads pages (one pipeline each) until it has enough.
        ``where``: a predicate records must also pass (an auth handler's filter)."""
        wanted = (metadata or {}).items()
        found: list[dict[str, Any]] = []
        start, page = 0, max(100, limit + offset)
        while len(found) < offset + limit:
            ids = await self.redis.zrevrange(ALL_THREADS, start, start + page - 1)
            if not ids:
                break
            for record in await self._many(thread_key(tid.decode()) for tid in ids):
                meta = (record or {}).get("metadata", {})
                if record and all(meta.get(k) == v for k, v in wanted) and \
                        status in (None, record["status"]) and (where is None or where(record)):
                    found.append(record)
            start += page
        return found[offset:offset + limit]

    async def _many(self, keys: Iterable[str]) -> list[dict[str, Any] | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            return [decode(raw) for raw in await pipe.execute()]

    async def delete_thread(self, thread_id: str) -> None:
        """The thread's records only; ``serve_app.retention.Retention.purge`` deletes
        every key of a thread (its checkpoints too)."""
        run_ids = await self.redis.zrange(thread_runs_key(thread_id), 0, -1)
        keys = [thread_key(thread_id), thread_runs_key(thread_id)]
        for rid in run_ids:
            keys += [run_key(thread_id, rid.decode()), events_key(thread_id, rid.decode())]
        await self.redis.delete(*keys)
        await self.redis.zrem(ALL_THREADS, thread_id)

    # runs
    async def create_run(self, thread_id: str, assistant_id: str, graph_id: str,
                         kwargs: dict[str, Any], metadata: dict[str, Any],
                         multitask_strategy: str, extra: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
        """``extra``: more fields of the record (e.g. ``webhook``, read when it ends)."""
        stamp = now_iso()
        record = {**(extra or {}),
            "run_id": str(uuid.uuid4()), "thread_id": thread_id, "assistant_id": assistant_id,
            "graph_id": graph_id, "status": "pending", "metadata": metadata, "kwargs": kwargs,
            "multitask_strategy": multitask_strategy, "created_at": stamp, "updated_at": stamp,
            "attempt": 1,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(run_key(thread_id, record["run_id"]), mapping=encode(record))
            pipe.zadd(thread_runs_key(thread_id), {record["run_id"]: time.time()})
            await pipe.execute()
        return record

    async def delete_run(self, run: dict[str, Any]) -> None:
        thread_id, run_id = run["thread_id"], run["run_id"]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(thread_runs_key(thread_id), run_id)
            pipe.delete(*run_scoped_keys(thread_id, run_id))
            await pipe.execute()

    async def get_run(self, thread_id: str, run_id: str) -> dict[str, Any] | None:
        return decode(await self.redis.hgetall(run_key(thread_id, run_id)))

    async def update_run(self, thread_id: str, run_id: str, returning: bool = True,
                         **fields: Any) -> dict[str, Any] | None:
        """Set fields of an existing run whatever its status (bookkeeping, not status)."""
        return await self._update(run_key(thread_id, run_id), fields, returning=returning)

    async def transition_run(self, run: dict[str, Any], allowed: Iterable[str],
                             returning: bool = True, **fields: Any) -> dict[str, Any] | None:
        """Set ``fields`` only if the run is still in an ``allowed`` status at the attempt
        ``run`` knows; the record after (``{}`` unless ``returning``), or None if someone
        else moved it first."""
        return await self._update(run_key(run["thread_id"], run["run_id"]), fields,
                                  allowed, run["attempt"], returning)

    async def list_runs(self, thread_id: str, limit: int = 10, offset: int = 0,
                        status: str | None = None) -> list[dict[str, Any]]:
        """Newest first; with a ``status``, the page is of the runs in it."""
        if status is None:
            run_ids = await self.redis.zrevrange(thread_runs_key(thread_id), offset,
                                                 offset + limit - 1)
        else:
            run_ids = await self.redis.zrevrange(thread_runs_key(thread_id), 0, -1)
        runs = await self._many(run_key(thread_id, rid.decode()) for rid in run_ids)
        runs = [run for run in runs if run and status in (None, run["status"])]
        return runs if status is None else runs[offset:offset + limit]
