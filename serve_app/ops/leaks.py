"""Leak check: Redis keys that belong to no live thread or run.

    python -m serve_app.ops.leaks [--url redis://...] [--thread-prefix PREFIX] [--delete]

An operator's tool (it scans the keyspace, which the serving layer never does). Exits 1 and
lists ``key  reason`` when it finds orphans:

- a key under a thread's prefix (``serve_app.keys.thread_prefix``: its records, runs,
  checkpoints and effect ledger entries) whose thread record is gone; what
  ``retention.keep_audit_on_delete`` keeps is not an orphan: an audit list or approval log
  with a TTL, and the effect ledger entries an audit list names;
- a run record or event stream its thread's run index does not name;
- a specialist's sub-thread (``<thread>/<role>/<task>``) whose result is already in its idle
  parent (retention missed it): reported as ``<checkpoint hash>[<sub-thread>]``;
- members of the global indexes (``ac:threads``, ``ac:expiry``) and of run pools' sets
  naming a thread or run that is gone.

Threads made without the serving layer (``AgentSystem`` in a notebook) have checkpoints but
no thread record: they show as orphans; ``--thread-prefix`` limits the check to some ids.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from typing import Any

from redis.asyncio import Redis

from agents.checkpoint import create_redis
from agents.keys import checkpoints_key, parse_checkpoint_field
from agents.redis_saver import LeanRedisSaver
from serve_app.keys import (
    ALL_THREADS,
    POOL_KEYS,
    THREAD_EXPIRY,
    audit_key,
    parse_ref,
    queue_key,
    run_key,
    split_thread_key,
    thread_key,
)
from serve_app.keys import thread_runs_key as runs_key
from serve_app.runs.retention import _text


class LeakCheck:
    def __init__(self, redis: Redis, thread_prefix: str = ""):
        self.redis = redis
        self.saver = LeanRedisSaver(redis)
        self.prefix = thread_prefix
        self._threads: dict[str, bool] = {}
        self._finished_subs: dict[str, set[str] | None] = {}
        self._audited: set[str] | None = None

    def mine(self, thread_id: str) -> bool:
        return thread_id.startswith(self.prefix)

    async def thread_exists(self, thread_id: str) -> bool:
        if thread_id not in self._threads:
            self._threads[thread_id] = bool(await self.redis.exists(thread_key(thread_id)))
        return self._threads[thread_id]

    async def run(self) -> list[tuple[str, str]]:
        pattern = f"*{_glob(self.prefix)}*" if self.prefix else "*"
        found: list[tuple[str, str]] = []
        async for raw in self.redis.scan_iter(match=pattern, count=2000):
            key = _text(raw)
            reason = await self.classify(key)
            if reason:
                found.append((key, reason))
        found += await self.index_members()
        found += await self.finished_sub_threads_found()
        return sorted(found)

    async def classify(self, key: str) -> str | None:
        split = split_thread_key(key)
        if split is None or not self.mine(split[0]):
            return None
        thread_id, rest = split
        if not await self.thread_exists(thread_id):
            if await self.kept_for_audit(rest, key):
                return None
            return "its thread is gone"
        parts = rest.split(":")
        if parts[0] == "run" and len(parts) >= 2 and \
                await self.redis.zscore(runs_key(thread_id), parts[1]) is None:
            return "a run its thread does not list"
        return None

    async def kept_for_audit(self, rest: str, key: str) -> bool:
        """What ``retention.keep_audit_on_delete`` keeps of a deleted thread: its audit
        list and approval log, expiring, and the ledger entries an audit list names."""
        if rest in ("audit", "approvals"):
            return await self.redis.ttl(key) > 0
        return key in await self.audited()

    async def audited(self) -> set[str]:
        """Ledger keys named by surviving audit lists (kept by policy)."""
        if self._audited is None:
            self._audited = set()
            pattern = audit_key(f"{_glob(self.prefix)}*")
            async for raw in self.redis.scan_iter(match=pattern, count=2000):
                for entry in await self.redis.lrange(raw, 0, -1):
                    self._audited.add(json.loads(entry).get("effect_key") or "")
        return self._audited

    async def finished_sub_threads_found(self) -> list[tuple[str, str]]:
        """Sub-threads of live threads whose result is in their idle parent."""
        found = []
        pattern = checkpoints_key(f"{_glob(self.prefix)}*")
        async for raw in self.redis.scan_iter(match=pattern, count=2000):
            key = _text(raw)
            thread_id, _ = split_thread_key(key) or ("", "")
            if not await self.thread_exists(thread_id):
                continue  # reported with the thread's other keys
            finished = await self.finished_sub_threads(thread_id) or set()
            subs = {parse_checkpoint_field(thread_id, _text(f))[0]
                    for f in await self.redis.hkeys(key)}
            found += [(f"{key}[{sub}]", "sub-thread whose result is in its idle parent")
                      for sub in sorted(subs & finished)]
        return found

    async def finished_sub_threads(self, parent: str) -> set[str] | None:
        """Sub-threads whose answer is a message of the idle parent's latest state (None
        while the parent is busy: its sub-threads may be in use)."""
        if parent not in self._finished_subs:
            done: set[str] | None = None
            if not await self.redis.zcard(queue_key(parent)):
                done = set()
                latest = await self.saver.aget_tuple({"configurable": {"thread_id": parent}})
                values = latest.checkpoint.get("channel_values") or {} if latest else {}
                for message in values.get("messages") or []:
                    meta = getattr(message, "response_metadata", None) or {}
                    if meta.get("worker") and meta.get("task_id"):
                        done.add(f"{parent}/{meta['worker']}/{meta['task_id']}")
            self._finished_subs[parent] = done
        return self._finished_subs[parent]

    async def index_members(self) -> list[tuple[str, str]]:
        found = []
        for index in (ALL_THREADS, THREAD_EXPIRY):
            async for member, _ in self.redis.zscan_iter(index, count=2000):
                thread_id = _text(member)
                if self.mine(thread_id) and not await self.thread_exists(thread_id):
                    found.append((f"{index}[{thread_id}]", "index entry of a thread that "
                                                           "is gone"))
        async for raw in self.redis.scan_iter(match=POOL_KEYS, count=2000):
            pool_key = _text(raw)
            if await self.redis.type(raw) not in (b"zset", "zset"):
                continue
            async for member, _ in self.redis.zscan_iter(raw, count=2000):
                ref = _text(member)
                thread_id, run_id = parse_ref(ref)
                if self.mine(thread_id) and not await self.redis.exists(
                        run_key(thread_id, run_id)):
                    found.append((f"{pool_key}[{ref}]", "pool entry of a run that is gone"))
        return found


def _glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


async def find_orphans(redis: Redis, thread_prefix: str = "") -> list[tuple[str, str]]:
    return await LeakCheck(redis, thread_prefix).run()


async def _main(args: Any) -> int:
    from agents.settings import get_settings
    redis = create_redis(args.url, get_settings().redis)  # a Redis Cluster too
    try:
        orphans = await find_orphans(redis, args.thread_prefix)
        for key, reason in orphans:
            print(f"{key}\t{reason}")
        if args.delete:
            keys = [k for k, _ in orphans if not k.endswith("]")]
            for start in range(0, len(keys), 500):
                await redis.delete(*keys[start:start + 500])
        print(f"{len(orphans)} orphan(s)", file=sys.stderr)
        return 1 if orphans and not args.delete else 0
    finally:
        await redis.aclose()


def main() -> None:
    from agents.settings import get_settings
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=get_settings().redis_url,
                        help="Redis URL (default: REDIS_URL)")
    parser.add_argument("--thread-prefix", default="",
                        help="check only threads whose id starts with this")
    parser.add_argument("--delete", action="store_true", help="delete the orphan keys")
    args = parser.parse_args()
    if not args.url:
        parser.error("no Redis URL: pass --url or set REDIS_URL")
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
