"""What a thread keeps in Redis, and how all of it goes.

Applied as each run ends (``serve_app.runs.endings``, while the run still holds its thread),
never by a scan of the keyspace: the thread's checkpoint hash names its checkpoints and its
sub-threads' (``agents.redis_saver``), the thread's hash tag (``serve_app.keys``) the rest.

- **Checkpoints.** By default a thread keeps every checkpoint (``keep_latest: 0``), as
  LangGraph does: history, time travel and branching from any step. That costs bytes
  linear in its turns, since a checkpoint names its messages and stores only the new ones
  (``agents.redis_saver``). As a choice, a bound: per checkpoint namespace the latest
  ``keep_latest`` checkpoints, those younger than ``keep_for_s``, and every checkpoint a
  queued or running run needs (where it started: rollback; the checkpoint it was asked to
  start from). Older ones go with their writes, write registries and the messages no kept
  checkpoint names. The latest is always kept, and with it any pending interrupt.
- **Specialists' sub-threads** (``<thread>/<role>/<task id>``, ``agents.supervisor``) go
  once their result is in the parent: every one not named by a pending interrupt of the
  parent or by the assignments its next step still has to run. Their approval decisions
  are copied first into the thread's audit list, with the effect ledger's result.
- **Runs.** A finished run's event stream expires ``events_grace_s`` after its end; the
  thread keeps its ``keep_runs`` newest finished run records.
- **Threads** with a TTL (their own ``ttl`` or ``thread_ttl_minutes``) are in one sorted set
  by expiry time; each replica's sweeper deletes those due. A thread-less run's thread is
  due ``events_grace_s`` after the run (``on_completion: delete``).

``purge`` deletes every key of a thread: records, runs, events, queue, lease, fencing
counter, every checkpoint namespace with its writes, its sub-threads, and (unless the
policy keeps them for audit) its audit list, approval log and effect ledger entries.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from agents.keys import checkpoints_key, effect_key, spend_key
from agents.redis_saver import CheckpointRef, Command, LeanRedisSaver
from agents.settings import RetentionSettings
from agents.supervisor import sub_thread_id
from serve_app.keys import (
    ALL_THREADS,
    THREAD_EXPIRY,
    approvals_key,
    audit_key,
    events_key,
    fence_key,
    queue_key,
    run_key,
    run_ref,
    run_scoped_keys,
    thread_key,
    thread_lease_key,
    thread_runs_key,
)
from serve_app.runs.pace import one_replica, pause
from serve_app.runs.records import TERMINAL, Records
from serve_app.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
SPECIAL_WRITES = ("__interrupt__", "__error__")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ts(checkpoint: dict[str, Any]) -> float:
    """A checkpoint's creation time (epoch s) from its ISO ``ts``."""
    try:
        return datetime.fromisoformat(checkpoint["ts"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return 0.0


async def delete_keys(redis: Redis, keys: Iterable[str], batch: int = 500) -> int:
    keys = list(dict.fromkeys(keys))
    deleted = 0
    for start in range(0, len(keys), batch):
        deleted += await redis.delete(*keys[start:start + batch])
    return deleted


@dataclass
class ThreadView:
    """What retention reads of a thread as a run ends, in one round trip."""

    names: list[bytes]  # the field names of its checkpoint hash
    queued: list[bytes]  # its queue's run ids
    latest: str | None  # its latest checkpoint (root namespace)
    run_ids: list[str]  # its run records, newest first
    ttl: bytes | None  # its own ttl, and whether its record exists
    exists: bool


class Retention:
    def __init__(self, redis: Redis, saver: LeanRedisSaver, settings: RetentionSettings,
                 records: Records | None = None, metrics: Metrics | None = None):
        self.redis = redis
        self.saver = saver
        self.settings = settings
        self.records = records or Records(redis)
        self.metrics = metrics or Metrics()
        self._memory_warned = False

    # as runs end
    async def after_run(self, run: dict[str, Any], graph: Any = None,
                        state: Any | None = None, deferred: list[Command] | None = None,
                        view: ThreadView | None = None) -> None:
        """Prune the thread of a run that just ended (``state``: the thread's state after
        it, if read; else read here from ``graph``); a rolled-back run's checkpoints go.
        Called while the run still holds its thread; never fails the run. With
        ``deferred``, the checkpoints' deletion is added to it instead of sent: the caller
        sends it with the thread's release, before it, in one round trip. ``view``: the
        thread as read already with the run's end (``view_in``)."""
        thread_id = run["thread_id"]
        try:
            if run.get("rolled_back_by_successor"):
                await self.roll_back(run)
                state = view = None
            view = view or await self._view(run)
            if self.settings.enabled:
                if state is None and graph is not None:
                    state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
                await self.prune(thread_id, state, finishing=run["run_id"], view=view,
                                 deferred=deferred)
                await self.prune_runs(thread_id, view.run_ids)
            if (run.get("kwargs") or {}).get("on_completion") == "delete":
                await self.expire_at(thread_id, time.time() + self.settings.events_grace_s)
            else:
                await self._restart_ttl(thread_id, view)
        except Exception:
            log.exception("retention of thread %s after run %s failed", thread_id,
                          run["run_id"])

    async def _view(self, run: dict[str, Any]) -> ThreadView:
        """The thread as the run ends (and its event stream's grace period started)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            view = self.view_in(pipe, run)
            found = view(await pipe.execute())
        assert found is not None  # (execute raised what failed)
        return found

    def view_in(self, pipe: Any, run: dict[str, Any]
                ) -> Callable[[list[Any]], ThreadView | None]:
        """``_view``'s reads as commands of the caller's pipeline (e.g. with the run's end
        record); the function returned makes the view from the pipeline's replies, or None
        if a read failed (``after_run`` then reads it again)."""
        thread_id, start = run["thread_id"], len(pipe)
        if self.settings.enabled:
            pipe.expire(events_key(thread_id, run["run_id"]), self.settings.events_grace_s)
        pipe.hkeys(checkpoints_key(thread_id))
        pipe.zrange(queue_key(thread_id), 0, -1)
        self.saver.latest_in(pipe, thread_id)
        pipe.zrevrange(thread_runs_key(thread_id), 0, -1)
        pipe.hmget(thread_key(thread_id), "ttl", "thread_id")
        end = len(pipe)

        def view(replies: list[Any]) -> ThreadView | None:
            mine = replies[start:end]
            if any(isinstance(reply, Exception) for reply in mine):
                return None
            *_, names, queued, latest, run_ids, (ttl, exists) = mine
            return ThreadView(names, queued, self.saver.latest_of(latest),
                              [_text(r) for r in run_ids], ttl, exists is not None)
        return view

    async def needed(self, thread_id: str, finishing: str | None = None,
                     queued: list[bytes] | None = None) -> set[str]:
        """Checkpoint ids that the thread's queued and running runs need (not the run
        ``finishing``, which is done with them; ``queued``: the queue as read already)."""
        ids: set[str] = set()
        if queued is None:
            queued = await self.redis.zrange(queue_key(thread_id), 0, -1)
        for rid in queued:
            if _text(rid) == finishing:
                continue
            run = await self.records.get_run(thread_id, _text(rid))
            if not run or run["status"] in TERMINAL:
                continue
            kwargs = run.get("kwargs") or {}
            ids.update(i for i in (run.get("checkpoint_before"), kwargs.get("checkpoint_id"),
                                   (kwargs.get("rollback_to") or {}).get("checkpoint_id")) if i)
        return ids

    async def prune(self, thread_id: str, state: Any | None, finishing: str | None = None,
                    view: ThreadView | None = None, deferred: list[Command] | None = None
                    ) -> int:
        """Old checkpoints and finished sub-threads (none if ``state`` is unknown: which
        sub-threads it needs is unknown), found by one read of the thread's checkpoint
        names (``view``: read already) and deleted in one round trip; how many
        checkpoints went."""
        names = view.names if view else await self.redis.hkeys(checkpoints_key(thread_id))
        refs = self.saver.refs_in(thread_id, names, sub_threads=None)
        doomed = await self._old_checkpoints(thread_id, [r for r in refs
                                                         if r.thread_id == thread_id],
                                             finishing=finishing, view=view)
        if state is not None:
            doomed += await self._finished_sub_threads(
                thread_id, [r for r in refs if r.thread_id != thread_id], state)
        return await self._delete(thread_id, doomed, deferred, names)

    async def prune_checkpoints(self, thread_id: str, keep_latest: int | None = None,
                                keep_for_s: float | None = None) -> int:
        """Drop the thread's checkpoints the policy does not keep; how many went."""
        doomed = await self._old_checkpoints(thread_id, await self.saver.refs(thread_id),
                                             keep_latest, keep_for_s)
        return await self._delete(thread_id, doomed)

    async def prune_sub_threads(self, thread_id: str, state: Any) -> int:
        """Delete the specialists' sub-threads whose result is in the parent (every one the
        parent's pending interrupts and next assignments do not name); how many
        checkpoints went."""
        refs = await self.saver.refs(thread_id, sub_threads=True)
        return await self._delete(thread_id, await self._finished_sub_threads(
            thread_id, refs, state))

    async def _delete(self, thread_id: str, doomed: list[CheckpointRef],
                      deferred: list[Command] | None = None,
                      names: list[bytes] | None = None) -> int:
        """Checkpoints with their writes and the messages only they name, and every
        namespace pointer of the sub-threads among them (a sub-thread goes whole); added to
        ``deferred`` if given. ``names``: the checkpoint hash's field names, if read."""
        subs = {(r.thread_id, r.ns) for r in doomed if r.thread_id != thread_id}
        if old := sum(r.thread_id == thread_id for r in doomed):
            self.metrics.count("checkpoints_pruned", old)
        if deferred is None:
            return await self.saver.delete(thread_id, doomed, pointers=subs, names=names)
        deferred += self.saver.deletion(thread_id, doomed, pointers=subs, messages=(
            await self.saver.unused_messages(thread_id, doomed, names)))
        return len(doomed)

    async def _old_checkpoints(self, thread_id: str, refs: list[CheckpointRef],
                               keep_latest: int | None = None,
                               keep_for_s: float | None = None,
                               finishing: str | None = None,
                               view: ThreadView | None = None) -> list[CheckpointRef]:
        keep_latest = self.settings.keep_latest if keep_latest is None else keep_latest
        if not keep_latest:  # every checkpoint kept
            return []
        keep_for_s = self.settings.keep_for_s if keep_for_s is None else keep_for_s
        by_ns: dict[str, list[CheckpointRef]] = defaultdict(list)
        for ref in refs:
            by_ns[ref.ns].append(ref)
        if all(len(chain) <= keep_latest for chain in by_ns.values()):
            return []
        needed = await self.needed(thread_id, finishing, view.queued if view else None)
        doomed = []
        for ns, chain in by_ns.items():
            latest = view.latest if view and ns == "" else \
                await self.saver.alatest_checkpoint_id(thread_id, ns)
            chain.sort(key=lambda r: r.checkpoint_id, reverse=True)
            doomed += [r for r in chain[keep_latest:]
                       if r.checkpoint_id not in needed and r.checkpoint_id != latest]
        if keep_for_s and doomed:  # those younger than keep_for_s stay
            young = time.time() - keep_for_s
            doomed = [s for s in await self.saver.load(thread_id, doomed)
                      if _ts(self.saver.decode(s)) < young]
        return doomed

    async def _finished_sub_threads(self, thread_id: str, refs: list[CheckpointRef],
                                    state: Any) -> list[CheckpointRef]:
        """The checkpoints of the sub-threads ``state`` no longer needs, their approval
        decisions (in those that were resumed) copied into the thread's audit list first."""
        doomed = {r.thread_id for r in refs} - self._live_sub_threads(thread_id, state)
        for sub in sorted({r.thread_id for r in refs if r.resumed} & doomed):
            await self._audit(thread_id, sub)  # decisions come only with an interrupt's answer
        if doomed:
            self.metrics.count("sub_threads_pruned", len(doomed))
        return [r for r in refs if r.thread_id in doomed]

    @staticmethod
    def _live_sub_threads(thread_id: str, state: Any) -> set[str]:
        live = set()
        for item in getattr(state, "interrupts", ()) or ():
            value = item.value if hasattr(item, "value") else item.get("value")
            if isinstance(value, dict) and value.get("thread_id"):
                live.add(value["thread_id"])
        values = getattr(state, "values", None) or {}
        if getattr(state, "next", None):
            for assignment in values.get("assignments") or []:
                live.add(sub_thread_id(thread_id, assignment))
        return live

    async def _audit(self, thread_id: str, sub: str) -> None:
        """Copy a sub-thread's approval decisions (and their effects' recorded results)
        into the thread's audit list before the sub-thread goes."""
        decisions = (await self._latest_values(sub)).get("decisions") or []
        if not decisions:
            return
        entries = []
        for decision in decisions:
            ledger = effect_key(sub, decision.get("tool_call_id", ""))
            result = await self.redis.get(ledger)
            entries.append(json.dumps({**decision, "thread_id": sub,
                                       "role": sub.rsplit("/", 2)[-2],
                                       "effect_key": ledger,
                                       "result": _text(result) if result else None,
                                       "recorded_at": time.time()}))
        if not await self.records.get_thread(thread_id):
            return  # deleted meanwhile: nothing to audit into
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(audit_key(thread_id), *entries)
            pipe.expire(audit_key(thread_id), int(self.settings.audit_ttl_days * 86400))
            await pipe.execute()

    async def prune_runs(self, thread_id: str, run_ids: list[str] | None = None) -> int:
        """Keep the ``keep_runs`` newest finished run records of the thread (``run_ids``:
        its records newest first, as read already)."""
        if run_ids is None:
            run_ids = [_text(r) for r in await self.redis.zrevrange(thread_runs_key(thread_id),
                                                                    0, -1)]
        older = run_ids[self.settings.keep_runs:]
        if not older:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in older:
                pipe.hget(run_key(thread_id, rid), "status")
            statuses = await pipe.execute()
        doomed = [rid for rid, status in zip(older, statuses, strict=True)
                  if status is None or json.loads(status) in TERMINAL]
        if doomed:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(thread_runs_key(thread_id), *doomed)
                pipe.delete(*[k for rid in doomed for k in run_scoped_keys(thread_id, rid)])
                await pipe.execute()
        return len(doomed)

    # rollback
    async def roll_back_safely(self, run: dict[str, Any]) -> None:
        try:
            await self.roll_back(run)
        except Exception:
            log.exception("rolling back run %s failed", run["run_id"])

    async def roll_back(self, run: dict[str, Any]) -> int:
        """Remove every checkpoint the run wrote (and its writes) and point the thread back
        at where it stood before; also the writes the run added to that checkpoint (a
        resume's answer and the resumed task's results), so its interrupt is pending again."""
        thread_id, run_id = run["thread_id"], run["run_id"]
        found = await self.saver.stored(thread_id)
        mine = [s for s in found if s.run_id == run_id]
        await self.saver.delete(thread_id, mine)
        before = next((s for s in found if s.checkpoint_id == run.get("checkpoint_before")
                       and s.ns == ""), None)
        if before is not None:
            writes = await self.saver.write_channels(before)
            interrupted = {task for task, channel in writes.values()
                           if channel == "__interrupt__"}
            await self.saver.drop_writes(thread_id, [
                name for name, (task, channel) in writes.items()
                if channel == "__resume__"
                or (task in interrupted and channel not in SPECIAL_WRITES)])
        remaining = [s for s in found if s.run_id != run_id]
        for ns in {s.ns for s in mine}:
            chain = sorted(s.checkpoint_id for s in remaining if s.ns == ns)
            await self.saver.point_latest(thread_id, ns, chain[-1] if chain else None)
        return len(mine)

    # thread TTLs
    def ttl_minutes(self, thread: dict[str, Any] | None) -> float | None:
        ttl = (thread or {}).get("ttl")
        if isinstance(ttl, dict) and ttl.get("ttl") is not None:
            return float(ttl["ttl"])
        return self.settings.thread_ttl_minutes

    async def touch(self, thread_id: str, thread: dict[str, Any] | None = None) -> None:
        """The thread was active: its idle TTL (if any) starts again now."""
        thread = thread or await self.records.get_thread(thread_id)
        minutes = self.ttl_minutes(thread)
        if thread is None:
            return
        if minutes is None:
            await self.redis.zrem(THREAD_EXPIRY, thread_id)
        else:
            await self.expire_at(thread_id, time.time() + minutes * 60)

    async def _restart_ttl(self, thread_id: str, view: ThreadView) -> None:
        """``touch`` after a run, from what the view read: a thread without a TTL is not
        in the expiry index (an update that removed its TTL took it out)."""
        minutes = self.ttl_minutes({"ttl": json.loads(view.ttl)} if view.ttl else None)
        if view.exists and minutes is not None:
            await self.expire_at(thread_id, time.time() + minutes * 60)

    async def expire_at(self, thread_id: str, when: float) -> None:
        await self.redis.zadd(THREAD_EXPIRY, {thread_id: when})

    async def sweep_once(self, executor: Any = None, limit: int = 100) -> list[str]:
        """Delete the threads whose TTL is due (one replica wins each); a busy one is
        looked at again next sweep. Returns the ids deleted."""
        due = await self.redis.zrangebyscore(THREAD_EXPIRY, "-inf", time.time(),
                                             start=0, num=limit)
        deleted = []
        for raw in due:
            thread_id = _text(raw)
            if not await self.redis.zrem(THREAD_EXPIRY, thread_id):
                continue  # another replica took it
            if await self.busy(thread_id):
                await self.expire_at(thread_id, time.time() + self.settings.sweep_interval_s)
                continue
            await self.purge(thread_id, pool=getattr(executor, "pool", None))
            deleted.append(thread_id)
        if deleted:
            self.metrics.count("threads_expired", len(deleted))
        return deleted

    async def busy(self, thread_id: str) -> bool:
        for rid in await self.redis.zrange(queue_key(thread_id), 0, -1):
            run = await self.records.get_run(thread_id, _text(rid))
            if run and run["status"] not in TERMINAL:
                return True
        return False

    async def check_memory(self) -> float | None:
        """Redis's used share of its maxmemory (None: no limit); warns once past
        ``memory_warn_ratio``."""
        info = await self.redis.info("memory")
        limit = int(info.get("maxmemory") or 0)
        if not limit:
            return None
        ratio = int(info["used_memory"]) / limit
        self.metrics.gauge("redis_memory_ratio", round(ratio, 4))
        if ratio >= self.settings.memory_warn_ratio and not self._memory_warned:
            log.warning("Redis uses %.0f%% of its maxmemory (%d of %d bytes): past 100%% "
                        "writes are refused (503); delete or expire threads, or raise "
                        "maxmemory", ratio * 100, info["used_memory"], limit)
        self._memory_warned = ratio >= self.settings.memory_warn_ratio
        return ratio

    async def sweep_forever(self, executor: Any = None) -> None:
        """Paced by the executor's live replicas: the cluster sweeps about every
        ``sweep_interval_s`` (any replica may delete any expired thread)."""
        replicas = executor.live_replicas if executor is not None else one_replica
        while True:
            await pause(self.settings.sweep_interval_s, replicas)
            try:
                await self.check_memory()
                await self.sweep_once(executor)
            except RedisError as exc:
                log.warning("retention sweep: %s", exc)
            except Exception:
                log.exception("retention sweep failed")

    # deleting everything
    async def purge(self, thread_id: str, pool: Any = None) -> int:
        """Delete every key of the thread; how many keys went. Idempotent."""
        run_ids = [_text(r) for r in await self.redis.zrange(thread_runs_key(thread_id), 0, -1)]
        run_ids += [_text(r) for r in await self.redis.zrange(queue_key(thread_id), 0, -1)]
        run_ids = list(dict.fromkeys(run_ids))
        keys = [thread_key(thread_id), thread_runs_key(thread_id), queue_key(thread_id),
                thread_lease_key(thread_id), fence_key(thread_id), spend_key(thread_id)]
        keys += [k for rid in run_ids for k in run_scoped_keys(thread_id, rid)]
        ledger = await self._ledger_keys(thread_id)
        audit = [audit_key(thread_id), approvals_key(thread_id)]  # + the API's approval log
        if self.settings.keep_audit_on_delete:
            for key in audit:
                await self.redis.expire(key, int(self.settings.audit_ttl_days * 86400))
        else:
            keys += [*audit, *ledger]
        deleted = await delete_keys(self.redis, keys)
        await self.redis.zrem(ALL_THREADS, thread_id)
        await self.redis.zrem(THREAD_EXPIRY, thread_id)
        if pool is not None:
            for rid in run_ids:
                await pool.done(run_ref(thread_id, rid))
        for _ in range(3):  # a write that raced the first pass
            found = await self.saver.delete_all(thread_id)
            deleted += found
            if not found:
                break
        return deleted

    async def _ledger_keys(self, thread_id: str) -> list[str]:
        """Effect ledger entries of the thread: those its audit list names and those of
        its live sub-threads' decisions."""
        keys = []
        for raw in await self.redis.lrange(audit_key(thread_id), 0, -1):
            entry = json.loads(raw)
            if entry.get("effect_key"):
                keys.append(entry["effect_key"])
        for sub in {r.thread_id for r in await self.saver.refs(thread_id, sub_threads=True)}:
            for message in (await self._latest_values(sub)).get("messages") or []:
                for call in getattr(message, "tool_calls", None) or []:
                    if call.get("id"):
                        keys.append(effect_key(sub, call["id"]))
        return keys

    async def _latest_values(self, thread_id: str) -> dict[str, Any]:
        found = await self.saver.aget_tuple({"configurable": {"thread_id": thread_id}})
        return found.checkpoint.get("channel_values") or {} if found else {}

