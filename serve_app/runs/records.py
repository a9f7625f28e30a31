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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis

from serve_app.keys import (
    ALL_THREADS,
    events_key,
    queue_key,
    run_key,
    run_scoped_keys,
    thread_key,
    thread_runs_key,
)
from serve_app.runs.leases import JOIN_QUEUE, evalsha_in, ran

RunStatus = Literal["pending", "running", "success", "error", "timeout", "interrupted"]
ThreadStatus = Literal["idle", "busy", "interrupted", "error"]
TERMINAL: frozenset[str] = frozenset({"success", "error", "timeout", "interrupted"})
ACTIVE: frozenset[str] = frozenset({"pending", "running"})

# A record written only if it does not exist yet (a script, not Redis 8's ``HSETEX FNX``:
# Redis Stack 7 has no HSETEX).
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS[1]: the record; KEYS[2] (optional): its thread's record, also updated (if it still
# exists) in the same step. ARGV[1]: allowed current statuses, JSON-encoded, comma-joined
# ('' = any); ARGV[2]: the attempt it must be at ('' = any); ARGV[3]: '1' to return the
# record after (else 1); ARGV[4]: how many of the field/value arguments that follow are the
# record's (the rest are the thread's).
_SET_IF = """
local now = redis.call('HMGET', KEYS[1], 'status', 'attempt')
local status = now[1]
if not status then return false end
if ARGV[1] ~= '' and not string.find(',' .. ARGV[1] .. ',', ',' .. status .. ',', 1, true)
then return false end
if ARGV[2] ~= '' and now[2] ~= ARGV[2] then return false end
local own = 4 + tonumber(ARGV[4])
if own > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5, own)) end
if #ARGV > own and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], unpack(ARGV, own + 1))
end
if ARGV[3] == '1' then return redis.call('HGETALL', KEYS[1]) end
return 1
"""

# A run recorded and queued on its thread in one step, so a refused run is never written.
# KEYS: thread record, run record, the thread's runs, its queue. ARGV[1]: '1' to refuse if
# the queue is not empty (``reject``); ARGV[2]: the thread's new metadata ('' = unchanged;
# then the thread must exist), ARGV[3]: its updated_at; ARGV[4]: creation time (s); ARGV[5]:
# the run id; then the run's field/value pairs. -> {-1} thread gone, else {joined (0
# refused, 1 at the head, 2 behind), the run ids queued before}.
_CREATE_RUN = JOIN_QUEUE + """
if ARGV[2] ~= '' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, {}} end
  redis.call('HSET', KEYS[1], 'metadata', ARGV[2], 'updated_at', ARGV[3])
end
local joined, before = join_queue(KEYS[4], ARGV[5], ARGV[1] == '1')
if joined == 0 then return {0, before} end
redis.call('HSET', KEYS[2], unpack(ARGV, 6))
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return {joined, before}
"""

# The end of a run: its terminal fields if it is still in an allowed status at its attempt,
# its thread's status and usage totals, the approval it leaves or answered, and the model's
# responses, in one step. KEYS: run record, thread record, responses. ARGV[1], ARGV[2]: as
# _SET_IF's; ARGV[3]: totals to add to the thread's ``usage`` (JSON object, '' = none);
# ARGV[4]: the approval this run leaves pending ('' = none); ARGV[5]: '1' if it answered
# one; ARGV[6]: the responses ('' = none), ARGV[7]: their TTL (s); ARGV[8]: how many of the
# field/value arguments that follow are the run's (the rest are the thread's).
# -> false if refused, else {1, the approval it answered (if any)}.
_END_RUN = """
local now = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not now[1] or now[2] ~= ARGV[2] or
   not string.find(',' .. ARGV[1] .. ',', ',' .. now[1] .. ',', 1, true) then return false end
local own = 8 + tonumber(ARGV[8])
redis.call('HSET', KEYS[1], unpack(ARGV, 9, own))
local answered = false
local thread = redis.call('HMGET', KEYS[2], 'status', 'usage', 'approval_requested')
if thread[1] then
  local set = {unpack(ARGV, own + 1)}
  if ARGV[3] ~= '' then
    local usage = thread[2] and cjson.decode(thread[2]) or {}
    for k, v in pairs(cjson.decode(ARGV[3])) do usage[k] = (tonumber(usage[k]) or 0) + v end
    set[#set + 1] = 'usage'
    set[#set + 1] = cjson.encode(usage)
  end
  if ARGV[5] == '1' then answered = thread[3] end
  if ARGV[4] ~= '' then
    set[#set + 1] = 'approval_requested'
    set[#set + 1] = ARGV[4]
  elseif answered then redis.call('HDEL', KEYS[2], 'approval_requested') end
  if #set > 0 then redis.call('HSET', KEYS[2], unpack(set)) end
end
if ARGV[6] ~= '' then redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[7]) end
return {1, answered}
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


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class RunEnd:
    """What a run's end writes besides its status (``serve_app.runs.run_telemetry.run_end``):
    more fields of its record, totals added to its thread's ``usage``, the approval it
    leaves pending (JSON) or whether it answered one, the model's responses (JSON, kept
    ``responses_ttl_s``) at ``responses_key``."""

    fields: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, Any] | None = None
    asks: str = ""
    answers: bool = False
    responses: str = ""
    responses_key: str = ""
    responses_ttl_s: int = 0


class Records:
    """CRUD of thread and run records; graph state itself lives in the checkpointer."""

    def __init__(self, redis: Redis):
        self.redis = redis
        self._create = redis.register_script(_CREATE)
        self._set_if = redis.register_script(_SET_IF)
        self._create_run = redis.register_script(_CREATE_RUN)
        self._end_run = redis.register_script(_END_RUN)

    async def _update(self, key: str, fields: dict[str, Any], allowed: Iterable[str] = (),
                      attempt: int | None = None, returning: bool = True,
                      thread: tuple[str, dict[str, Any]] | None = None
                      ) -> dict[str, Any] | None:
        """Set ``fields`` if the record exists, is in an ``allowed`` status (any if empty)
        and at ``attempt`` (any if None); the record after, or unless ``returning`` the
        fields written (a writer that has the record spares Redis reading it back), or
        None if refused. ``thread``: (key, fields) of the thread's record, set in the same
        step if this one is (and the thread still exists)."""
        keys, args, written = _update_call(key, fields, allowed, attempt, returning, thread)
        return _updated(await self._set_if(keys=keys, args=args), returning, written)

    async def _create_record(self, key: str, record: dict[str, Any]
                             ) -> tuple[dict[str, Any], bool]:
        """(the stored record, whether it is new): the record as asked if it is. Written
        only if it has none of those fields yet (every record has them all)."""
        while True:
            if await self._create(keys=[key], args=flat(record)):
                return record, True
            stored = decode(await self.redis.hgetall(key))
            if stored is not None:  # else deleted meanwhile: create it after all
                return stored, False

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

    async def get_runs(self, thread_id: str, run_ids: Iterable[str]
                       ) -> list[dict[str, Any] | None]:
        """Runs of the thread in one round trip (None for each gone)."""
        return await self._many(run_key(thread_id, rid) for rid in run_ids)

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
        """The thread's records only; ``serve_app.runs.retention.Retention.purge`` deletes
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
                         multitask_strategy: str, extra: dict[str, Any] | None = None,
                         reject: bool = False, thread_metadata: dict[str, Any] | None = None
                         ) -> tuple[dict[str, Any] | None, int, list[str]]:
        """Record the run and queue it on its thread (``serve_app.runs.leases``), in one step:
        (the record, 1 at the head of the queue or 2 behind another run, the run ids queued
        before it); (None, 0, those ids) if ``reject`` and the queue is not empty (nothing
        is written). ``extra``: more fields of the record (e.g. ``webhook``, read when it
        ends); ``thread_metadata``: the thread's new metadata, written in the same step
        ((None, -1, []) if the thread has gone meanwhile)."""
        stamp = now_iso()
        record = {**(extra or {}),
            "run_id": str(uuid.uuid4()), "thread_id": thread_id, "assistant_id": assistant_id,
            "graph_id": graph_id, "status": "pending", "metadata": metadata, "kwargs": kwargs,
            "multitask_strategy": multitask_strategy, "created_at": stamp, "updated_at": stamp,
            "attempt": 1,
        }
        run_id = record["run_id"]
        joined, before = await self._create_run(
            keys=[thread_key(thread_id), run_key(thread_id, run_id), thread_runs_key(thread_id),
                  queue_key(thread_id)],
            args=["1" if reject else "0",
                  "" if thread_metadata is None else json.dumps(thread_metadata),
                  json.dumps(stamp), time.time(), run_id, *flat(record)])
        return (record if joined > 0 else None), int(joined), [_text(rid) for rid in before]

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
                             returning: bool = True, thread_fields: dict[str, Any] | None = None,
                             **fields: Any) -> dict[str, Any] | None:
        """Set ``fields`` only if the run is still in an ``allowed`` status at the attempt
        ``run`` knows (and its thread's ``thread_fields`` with them); the record after (the
        fields written unless ``returning``), or None if someone else moved it first."""
        return await self._update(*_transition(run, allowed, returning, thread_fields, fields))

    def transition_run_in(self, pipe: Any, run: dict[str, Any], allowed: Iterable[str],
                          returning: bool = True, thread_fields: dict[str, Any] | None = None,
                          **fields: Any) -> Callable[[Any], Awaitable[dict[str, Any] | None]]:
        """``transition_run`` as one command of the caller's pipeline; the function
        returned reads its reply (a Redis that lost its scripts: ``transition_run``)."""
        keys, args, written = _update_call(*_transition(run, allowed, returning,
                                                        thread_fields, fields))
        evalsha_in(pipe, self._set_if.sha, keys, *args)

        async def transitioned(reply: Any) -> dict[str, Any] | None:
            if ran(reply):
                return _updated(reply, returning, written)
            return await self.transition_run(run, allowed, returning, thread_fields, **fields)
        return transitioned

    async def end_run(self, run: dict[str, Any], allowed: Iterable[str],
                      thread_fields: dict[str, Any], end: RunEnd, **fields: Any
                      ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Set the run's ``fields`` (and ``end``'s) if it is still in an ``allowed`` status
        at the attempt ``run`` knows, its thread's ``thread_fields`` and ``end``'s totals
        with them: (the record after, or None if someone else moved it first; the approval
        this run answered, if it did)."""
        keys, args, written = self._end_call(run, allowed, thread_fields, end, fields)
        return _ended(run, written, await self._end_run(keys=keys, args=args))

    def end_run_in(self, pipe: Any, run: dict[str, Any], allowed: Iterable[str],
                   thread_fields: dict[str, Any], end: RunEnd, **fields: Any
                   ) -> Callable[[Any], Awaitable[tuple[dict[str, Any] | None,
                                                        dict[str, Any] | None]]]:
        """``end_run`` as one command of the caller's pipeline; the function returned reads
        its reply (a Redis that lost its scripts: ``end_run``)."""
        keys, args, written = self._end_call(run, allowed, thread_fields, end, fields)
        evalsha_in(pipe, self._end_run.sha, keys, *args)

        async def ended(reply: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            if ran(reply):
                return _ended(run, written, reply)
            return await self.end_run(run, allowed, thread_fields, end, **fields)
        return ended

    @staticmethod
    def _end_call(run: dict[str, Any], allowed: Iterable[str], thread_fields: dict[str, Any],
                  end: RunEnd, fields: dict[str, Any]
                  ) -> tuple[list[str], list[Any], dict[str, Any]]:
        """The end script's keys and arguments, and the run's fields it writes."""
        stamp = now_iso()
        written = {**fields, **end.fields, "updated_at": stamp}
        own = flat(written)
        thread_id = run["thread_id"]
        keys = [run_key(thread_id, run["run_id"]), thread_key(thread_id),
                end.responses_key or run_key(thread_id, run["run_id"])]
        args = [_statuses(allowed), json.dumps(run["attempt"]),
                json.dumps(end.totals) if end.totals else "", end.asks,
                "1" if end.answers else "", end.responses, end.responses_ttl_s, len(own),
                *own, *flat({**thread_fields, "updated_at": stamp})]
        return keys, args, written

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


def _ended(run: dict[str, Any], written: dict[str, Any], reply: Any
           ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``end_run``'s answer from its script's reply."""
    ended, answered = reply or (None, None)
    if not ended:
        return None, None
    return {**run, **written}, json.loads(answered) if answered else None


def _transition(run: dict[str, Any], allowed: Iterable[str], returning: bool,
                thread_fields: dict[str, Any] | None, fields: dict[str, Any]) -> tuple:
    """``Records._update``'s arguments for a run's status change."""
    thread = None if thread_fields is None else (thread_key(run["thread_id"]), thread_fields)
    return (run_key(run["thread_id"], run["run_id"]), fields, allowed, run["attempt"],
            returning, thread)


def _update_call(key: str, fields: dict[str, Any], allowed: Iterable[str],
                 attempt: int | None, returning: bool,
                 thread: tuple[str, dict[str, Any]] | None
                 ) -> tuple[list[str], list[Any], dict[str, Any]]:
    """The update script's keys and arguments, and the fields it writes."""
    stamp = now_iso()
    written = {**fields, "updated_at": stamp}
    own = flat(written)
    keys, args = [key], [_statuses(allowed), "" if attempt is None else json.dumps(attempt),
                         "1" if returning else "0", len(own), *own]
    if thread is not None:
        keys.append(thread[0])
        args += flat({**thread[1], "updated_at": stamp})
    return keys, args, written


def _updated(stored: Any, returning: bool, written: dict[str, Any]) -> dict[str, Any] | None:
    """``Records._update``'s answer from its script's reply."""
    if stored is None:
        return None
    return decode(stored) if returning else written
