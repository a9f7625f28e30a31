"""The final audit: read every thread's state back and check each turn the users sent.

A turn the client saw succeed must be in its thread exactly once, followed (before the
next user message) by an answer the stub's contract predicts; otherwise it is lost,
duplicated, unanswered or wrongly answered. A turn refused at admission must not be in its
thread at all. Turns that failed on the client are only checked for duplication (whether
the server kept them is not knowable from outside). A thread still ``busy`` once the load
has drained is counted too (a run that never ended).

The audit has an overall deadline: a peer that collapsed under the spike may still be
working through its backlog and answer each read in tens of seconds, and the run must end.
Threads not read by then are counted as ``unaudited``, not as checked.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import orjson

from bench.loadgen import TurnRecord
from bench.workload import answer_ok

DEADLINE_S = 300.0


def _role(message: dict[str, Any]) -> str:
    kind = str(message.get("type") or message.get("role") or "").lower()
    if kind in ("human", "user", "humanmessage", "humanmessagechunk"):
        return "human"
    return "ai" if kind.startswith("ai") or kind == "assistant" else kind


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return content or ""


def check_thread(turns: list[TurnRecord], messages: list[dict[str, Any]]) -> Counter[str]:
    """Counts of ``ok``, ``lost``, ``duplicated``, ``unanswered``, ``wrong_answer``, ``extra``."""
    counts: Counter[str] = Counter()
    humans = [(i, _text(m)) for i, m in enumerate(messages) if _role(m) == "human"]
    sent = {t.turn.text for t in turns}
    counts["extra"] += sum(1 for _, text in humans if text not in sent)
    for record in turns:
        where = [i for i, text in humans if text == record.turn.text]
        if len(where) > 1:
            counts["duplicated"] += 1
        if record.refused:
            counts["refused"] += 1
            if where:  # refused means nothing was stored
                counts["refused_but_stored"] += 1
            continue
        if not record.ok:
            counts["failed_on_client"] += 1
            continue
        if not where:
            counts["lost"] += 1
            continue
        start = where[0]
        following = [i for i, _ in humans if i > start]
        stop = following[0] if following else len(messages)
        answers = [_text(m) for m in messages[start + 1:stop] if _role(m) == "ai"]
        if not any(a.strip() for a in answers):
            counts["unanswered"] += 1
        elif not any(answer_ok(record.turn, a) for a in answers):
            counts["wrong_answer"] += 1
        else:
            counts["ok"] += 1
    return counts


async def audit(base_url: str, records: list[TurnRecord], concurrency: int = 8,
                timeout_s: float = 60.0, deadline_s: float = DEADLINE_S) -> dict[str, Any]:
    """Read every thread's state through the API and check every turn sent to it, for at
    most ``deadline_s`` in all."""
    by_thread: dict[str, list[TurnRecord]] = defaultdict(list)
    for record in records:
        by_thread[record.thread_id].append(record)
    totals: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def one(session: aiohttp.ClientSession, thread_id: str,
                  turns: list[TurnRecord]) -> None:
        async with gate:
            try:
                async with session.get(f"{base_url}/threads/{thread_id}/state") as resp:
                    if resp.status != 200:
                        totals["read_errors"] += 1
                        return
                    state = orjson.loads(await resp.read())
                async with session.get(f"{base_url}/threads/{thread_id}") as resp:
                    if resp.status == 200 and \
                            orjson.loads(await resp.read()).get("status") == "busy":
                        totals["busy_threads"] += 1
            except (TimeoutError, aiohttp.ClientError):
                totals["read_errors"] += 1
                return
        messages = (state.get("values") or {}).get("messages") or []
        totals.update(check_thread(turns, messages))

    async with aiohttp.ClientSession(timeout=timeout) as session:
        reads = [asyncio.create_task(one(session, tid, turns))
                 for tid, turns in by_thread.items()]
        done, unfinished = (await asyncio.wait(reads, timeout=deadline_s) if reads
                            else (set(), set()))
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        for task in done:
            task.result()  # a bug in the check itself must not pass silently
    result = {key: totals.get(key, 0) for key in
              ("ok", "lost", "duplicated", "unanswered", "wrong_answer", "extra",
               "failed_on_client", "refused", "refused_but_stored", "read_errors",
              "busy_threads")}
    result["unaudited_threads"] = len(unfinished)
    result["threads"] = len(by_thread)
    result["turns"] = len(records)
    return result
