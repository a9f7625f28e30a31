"""Threads and runs as records in Redis, so every replica sees the same ones.

``thread:<tid>`` and ``run:<rid>`` hold JSON, ``thread:<tid>:runs`` is a sorted set of the
thread's runs by creation time, ``run:<rid>:events`` is the run's Redis Stream of events
(key names in ``serve_app.keys``).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis

from serve_app.keys import ALL_THREADS, events_key, run_key, thread_key, thread_runs_key

RunStatus = Literal["pending", "running", "success", "error", "timeout", "interrupted"]
ThreadStatus = Literal["idle", "busy", "interrupted", "error"]
TERMINAL: frozenset[str] = frozenset({"success", "error", "timeout", "interrupted"})


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Records:
    """CRUD of thread and run records; graph state itself lives in the checkpointer."""

    def __init__(self, redis: Redis):
        self.redis = redis

    async def _get(self, key: str) -> dict[str, Any] | None:
        return _record(await self.redis.get(key))

    async def _put(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        await self.redis.set(key, json.dumps(record))
        return record

    # threads
    async def get_thread(self, thread_id: str) -> dict[str, Any] | None:
        return await self._get(thread_key(thread_id))

    async def create_thread(
        self, thread_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Create unless it exists; returns (record, created)."""
        thread_id = thread_id or str(uuid.uuid4())
        stamp = now_iso()
        record = {"thread_id": thread_id, "created_at": stamp, "updated_at": stamp,
                  "metadata": metadata or {}, "status": "idle"}
        created = await self.redis.set(thread_key(thread_id), json.dumps(record), nx=True)
        if not created:
            return await self.get_thread(thread_id), False
        await self.redis.zadd(ALL_THREADS, {thread_id: time.time()})
        return record, True

    async def _update(self, key: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        record = await self._get(key)
        if record is None:
            return None
        record.update(fields, updated_at=now_iso())
        return await self._put(key, record)

    async def update_thread(self, thread_id: str, **fields: Any) -> dict[str, Any] | None:
        return await self._update(thread_key(thread_id), fields)

    async def search_threads(self, limit: int, offset: int, metadata: dict[str, Any] | None,
                             status: str | None = None) -> list[dict[str, Any]]:
        """Newest first; a filter reads pages (one ``MGET`` each) until it has enough."""
        wanted = (metadata or {}).items()
        found: list[dict[str, Any]] = []
        start, page = 0, max(100, limit + offset)
        while len(found) < offset + limit:
            ids = await self.redis.zrevrange(ALL_THREADS, start, start + page - 1)
            if not ids:
                break
            for raw in await self.redis.mget([thread_key(tid.decode()) for tid in ids]):
                record = _record(raw)
                meta = (record or {}).get("metadata", {})
                if record and all(meta.get(k) == v for k, v in wanted) and \
                        status in (None, record["status"]):
                    found.append(record)
            start += page
        return found[offset:offset + limit]

    async def delete_thread(self, thread_id: str) -> None:
        run_ids = await self.redis.zrange(thread_runs_key(thread_id), 0, -1)
        keys = [thread_key(thread_id), thread_runs_key(thread_id)]
        for rid in run_ids:
            keys += [run_key(rid.decode()), events_key(rid.decode())]
        await self.redis.delete(*keys)
        await self.redis.zrem(ALL_THREADS, thread_id)

    # runs
    async def create_run(self, thread_id: str, assistant_id: str, graph_id: str,
                         kwargs: dict[str, Any], metadata: dict[str, Any],
                         multitask_strategy: str) -> dict[str, Any]:
        stamp = now_iso()
        record = {
            "run_id": str(uuid.uuid4()), "thread_id": thread_id, "assistant_id": assistant_id,
            "graph_id": graph_id, "status": "pending", "metadata": metadata, "kwargs": kwargs,
            "multitask_strategy": multitask_strategy, "created_at": stamp, "updated_at": stamp,
            "attempt": 1,
        }
        await self._put(run_key(record["run_id"]), record)
        await self.redis.zadd(thread_runs_key(thread_id), {record["run_id"]: time.time()})
        return record

    async def delete_run(self, run: dict[str, Any]) -> None:
        await self.redis.zrem(thread_runs_key(run["thread_id"]), run["run_id"])
        await self.redis.delete(run_key(run["run_id"]), events_key(run["run_id"]))

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return await self._get(run_key(run_id))

    async def update_run(self, run_id: str, **fields: Any) -> dict[str, Any] | None:
        return await self._update(run_key(run_id), fields)

    async def list_runs(self, thread_id: str, limit: int = 10,
                        offset: int = 0) -> list[dict[str, Any]]:
        run_ids = await self.redis.zrevrange(thread_runs_key(thread_id), offset,
                                             offset + limit - 1)
        runs = [await self.get_run(rid.decode()) for rid in run_ids]
        return [run for run in runs if run]


def _record(raw: bytes | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw else None
