"""Leak check: Redis keys that belong to no live thread or run.

    python -m serve_app.ops.leaks [--url redis://...] [--thread-prefix PREFIX] [--delete]

An operator's tool (it scans the keyspace, which the serving layer never does). Exits 1 and
lists ``key  reason`` when it finds orphans:

- a key under a thread's hash tag (``ac:{<thread>}:...``) whose thread record is gone (an
  audit list with a TTL, kept by ``retention.keep_audit_on_delete``, is not an orphan);
- a run record or event stream its thread's run index does not name;
- the checkpoints of a thread with no thread record (they are under its hash tag);
- a specialist's sub-thread (``<thread>/<role>/<task>``) whose result is already in its idle
  parent (retention missed it): reported as ``<checkpoint hash>[<sub-thread>]``;
- an effect ledger entry (``ac:effect:...``) of a thread that is gone and named by no
  audit list;
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
from agents.effects import LEDGER_PREFIX
from agents.redis_saver import LeanRedisSaver
from agents.slots import parse_checkpoint_field, untagged
from serve_app.keys import (
    ALL_THREADS,
    PREFIX,
    THREAD_EXPIRY,
    parse_ref,
    queue_key,
    run_key,
    thread_key,
)
from serve_app.keys import thread_runs_key as runs_key
from serve_app.runs.retention import _text

TAGGED = re.compile(r"^ac:\{(?P<tag>[^}]*)\}:(?P<rest>.*)$")
SUB_THREAD = re.compile(r"^(?P<parent>.+)/[^/]+/[^/]+$")


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

    async def owner_exists(self, thread_id: str) -> bool:
        """A thread, or the parent of a specialist's sub-thread, with a record."""
        if await self.thread_exists(thread_id):
            return True
        sub = SUB_THREAD.match(thread_id)
        return bool(sub) and await self.thread_exists(sub["parent"])

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
        tagged = TAGGED.match(key)
        if tagged and not tagged["tag"].startswith("pool:"):
            return await self._thread_key(tagged["tag"], tagged["rest"], key)
        if key.startswith(LEDGER_PREFIX):
            return await self._ledger(key)
        return None

    async def _thread_key(self, thread_id: str, rest: str, key: str) -> str | None:
        if not self.mine(thread_id):
            return None
        if not await self.thread_exists(thread_id):
            if rest in ("audit", "approvals") and await self.redis.ttl(key) > 0:
                return None  # kept for audit by policy, expiring
            return "its thread is gone"
        parts = rest.split(":")
        if parts[0] == "run" and len(parts) >= 2 and \
                await self.redis.zscore(runs_key(thread_id), parts[1]) is None:
            return "a run its thread does not list"
        return None

    async def _ledger(self, key: str) -> str | None:
        thread_id = untagged(key[len(LEDGER_PREFIX):].rsplit(":", 1)[0])
        if not self.mine(thread_id) or await self.owner_exists(thread_id):
            return None
        if key in await self.audited():
            return None
        return "effect ledger entry of a deleted thread"

    async def audited(self) -> set[str]:
        """Ledger keys named by surviving audit lists (kept by policy)."""
        if self._audited is None:
            self._audited = set()
            pattern = f"{PREFIX}{{{_glob(self.prefix)}*}}:audit"
            async for raw in self.redis.scan_iter(match=pattern, count=2000):
                for entry in await self.redis.lrange(raw, 0, -1):
                    self._audited.add(json.loads(entry).get("effect_key") or "")
        return self._audited

    async def finished_sub_threads_found(self) -> list[tuple[str, str]]:
        """Sub-threads of live threads whose result is in their idle parent."""
        found = []
        pattern = f"{PREFIX}{{{_glob(self.prefix)}*}}:checkpoints"
        async for raw in self.redis.scan_iter(match=pattern, count=2000):
            key = _text(raw)
            thread_id = untagged(key[len(PREFIX):].rsplit(":", 1)[0])
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
        async for raw in self.redis.scan_iter(match=f"{PREFIX}{{pool:*", count=2000):
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
