"""Simulated users against any server speaking LangGraph Platform's API (ours or a peer).

Each user holds a thread, sends a message, reads the SSE stream to its end, thinks for a
randomised while and repeats; after ``turns_per_thread`` turns it opens a new thread. A
share of turns stops for approval, which the simulated approver grants after a delay. The
number of users is changed at run time (``set_users``) so one session can walk up a
staircase of load levels; every turn is recorded for the window summaries and the audit.

aiohttp, not httpx: on two shared cores an httpx client saturates at ~170 req/s of its own
CPU (measured-facts.md), and the client must not be what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from bench.sse import frames
from bench.stats import summary
from bench.workload import Turn, make_turn

STREAM_MODE = ["messages-tuple", "custom", "values"]  # what the SDK example in README uses
REFUSED = "refused"
RESUME_PATIENCE_S = 120.0  # how long the approver keeps trying a refused approval


@dataclass
class LoadConfig:
    think_s: float = 30.0          # mean think time; each pause is uniform in [0.5x, 1.5x]
    ramp_s: float | None = None    # new users send their first message within this long;
    #                                None: the think time, so arrivals are steady at once
    approval_share: float = 0.1    # share of turns that stop for an approval
    memory_share: float = 0.1      # share of turns asking "what did I ask before?"
    approval_delay_s: float = 5.0  # mean time the approver takes (uniform 0.5x-1.5x)
    turns_per_thread: int = 5      # then the user opens a new thread
    turn_timeout_s: float = 120.0  # one run's stream, from request to close
    assistant_id: str = "supervisor"
    context: dict[str, Any] | None = None  # each run's ``context`` (the graph's schema)
    seed: int = 7


@dataclass
class RunResult:
    """One ``POST /threads/{tid}/runs/stream``, timed on the client's monotonic clock."""

    started: float
    wall_started: float
    first_token: float | None = None
    last_token: float | None = None
    ended: float | None = None
    tokens: int = 0
    interrupted: bool = False
    error: str | None = None
    retry_after: float | None = None  # refused (503): how long the server asked to wait


@dataclass
class TurnRecord:
    user: int
    thread_id: str
    index: int
    turn: Turn
    started: float
    runs: list[RunResult] = field(default_factory=list)
    approval_wait: float = 0.0
    finished: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.finished is not None and self.error is None

    @property
    def refused(self) -> bool:
        """Its first run was turned away at admission: nothing was stored, the user may
        send it again. (An approval refused after its first run is an error instead.)"""
        return self.error == REFUSED and len(self.runs) == 1

    @property
    def answering(self) -> RunResult | None:
        """The run whose tokens answer the user (the resume run of an approval turn)."""
        return self.runs[-1] if self.runs else None

    @property
    def ttft(self) -> float | None:
        run = self.answering
        return None if run is None or run.first_token is None else run.first_token - run.started

    @property
    def ttlt(self) -> float | None:
        run = self.answering
        return None if run is None or run.last_token is None else run.last_token - run.started


def check_target(base_url: str) -> None:
    """Refuse anything but loopback targets: this tool generates real load."""
    host = urlsplit(base_url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"load targets must be on 127.0.0.1, not {host!r}")


LAG_TICK_S = 0.05


class LoadGenerator:
    """Users as asyncio tasks on one aiohttp session; ``records`` keeps every turn."""

    def __init__(self, base_url: str, config: LoadConfig):
        check_target(base_url)
        self.base_url = base_url.rstrip("/")
        self.config = config
        self.rng = random.Random(config.seed)
        self.run_tag = uuid.uuid4().hex[:6]
        self.records: list[TurnRecord] = []
        self.thread_errors: Counter[str] = Counter()
        self._users: dict[int, asyncio.Task] = {}
        self._retired: set[int] = set()
        self._in_turn: set[int] = set()
        self._ids = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self.lags: list[tuple[float, float]] = []  # (when, s): how late its own loop woke
        self._lag_watch: asyncio.Task | None = None

    async def __aenter__(self) -> LoadGenerator:
        # Keep-alive shorter than the servers' (uvicorn: 5 s) so no request is sent on a
        # connection the server is closing at that moment.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3.0)
        self._session = aiohttp.ClientSession(
            connector=connector, json_serialize=lambda o: orjson.dumps(o).decode(),
            timeout=aiohttp.ClientTimeout(total=self.config.turn_timeout_s, sock_connect=10))
        self._lag_watch = asyncio.create_task(self._watch_lag())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._lag_watch is not None:
            self._lag_watch.cancel()
        await self.stop(drain_s=0)
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ users

    @property
    def users(self) -> int:
        """Users holding a session now (not retired)."""
        return len(self._users) - len(self._retired & set(self._users))

    def set_users(self, count: int) -> None:
        """Grow to ``count`` users or retire some. New users send their first message at a
        uniform time within the ramp, as if they had been thinking already: with the ramp
        equal to the think time, the arrival rate is the level's steady rate from the
        start instead of a burst."""
        ramp = self.config.think_s if self.config.ramp_s is None else self.config.ramp_s
        active = [u for u in self._users if u not in self._retired]
        for uid in active[count:]:
            self._retire(uid)
        for _ in range(count - len(active)):
            uid = next(self._ids)
            task = asyncio.create_task(self._user(uid, self.rng.uniform(0, ramp)))
            self._users[uid] = task
            task.add_done_callback(lambda _, uid=uid: self._users.pop(uid, None))

    def _retire(self, uid: int) -> None:
        self._retired.add(uid)
        task = self._users.get(uid)
        if task is not None and uid not in self._in_turn:
            task.cancel()  # thinking: leave now; in a turn: leave after it

    async def stop(self, drain_s: float = 60.0) -> None:
        """Retire every user; wait up to ``drain_s`` for turns in flight, then cancel."""
        for uid in list(self._users):
            self._retire(uid)
        tasks = list(self._users.values())
        if tasks and drain_s > 0:
            await asyncio.wait(tasks, timeout=drain_s)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_lag(self, tick_s: float = LAG_TICK_S) -> None:
        """Its own event loop's lateness: every latency it measures includes it, so a
        client starved of CPU shows here instead of passing for a slow target."""
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(tick_s)
            now = time.perf_counter()
            self.lags.append((now, now - asked - tick_s))

    def lag_ms(self, start: float, end: float) -> dict[str, Any]:
        """Summary (ms) of its loop's lateness between two ``perf_counter`` times."""
        return summary([lag for when, lag in self.lags if start <= when < end], 1000)

    def in_flight(self, since: float) -> int:
        return sum(1 for r in self.records if r.started >= since and r.finished is None)

    async def _user(self, uid: int, delay: float) -> None:
        await asyncio.sleep(delay)
        while uid not in self._retired:
            thread_id = await self._create_thread()
            if thread_id is None:
                await self._think()
                continue
            previous: str | None = None
            for index in range(self.config.turns_per_thread):
                turn = make_turn(self.rng, f"{self.run_tag}-{uid}-{thread_id[:8]}-{index}", index,
                                 previous, self.config.approval_share, self.config.memory_share)
                self._in_turn.add(uid)
                try:
                    record = await self._turn(uid, thread_id, index, turn)
                finally:
                    self._in_turn.discard(uid)
                if uid in self._retired:
                    return
                if record.refused:  # nothing stored: wait as asked, then say something new
                    await asyncio.sleep(record.runs[-1].retry_after * self.rng.uniform(1, 1.5))
                    continue
                await self._think()
                if not record.ok:
                    break  # the thread's state is uncertain: start a fresh one
                previous = turn.text

    async def _think(self) -> None:
        await asyncio.sleep(self.config.think_s * self.rng.uniform(0.5, 1.5))

    # ------------------------------------------------------------------ requests

    async def _create_thread(self) -> str | None:
        try:
            async with self._session.post(f"{self.base_url}/threads", json={}) as resp:
                if resp.status != 200:
                    self.thread_errors[f"http_{resp.status}"] += 1
                    return None
                return (await resp.json(loads=orjson.loads))["thread_id"]
        except Exception as exc:
            self.thread_errors[error_kind(exc)] += 1
            return None

    async def _turn(self, uid: int, thread_id: str, index: int, turn: Turn) -> TurnRecord:
        record = TurnRecord(uid, thread_id, index, turn, time.perf_counter())
        self.records.append(record)
        body: dict[str, Any] = {"input": {"messages": [{"role": "user", "content": turn.text}]}}
        run = await self.stream_run(thread_id, body)
        record.runs.append(run)
        if run.error is None and turn.kind == "approval":
            if not run.interrupted:
                run.error = "no_interrupt"
            else:
                record.approval_wait = self.config.approval_delay_s * self.rng.uniform(0.5, 1.5)
                await asyncio.sleep(record.approval_wait)
                decision = {"action": "approve", "by": "bench"}
                give_up = time.perf_counter() + RESUME_PATIENCE_S
                while True:  # the approver tries again, as asked, when refused
                    run = await self.stream_run(thread_id, {"command": {"resume": decision}})
                    record.runs.append(run)
                    if run.error != REFUSED or time.perf_counter() > give_up:
                        break
                    await asyncio.sleep(run.retry_after)
                    record.approval_wait += run.ended - run.started + run.retry_after
                if run.error == REFUSED:
                    run.error = "approval_refused"
        if run.error is None and run.interrupted:
            run.error = "unexpected_interrupt"
        if run.error is None and run.first_token is None:
            run.error = "no_token"
        record.error = run.error
        record.finished = time.perf_counter()
        return record

    async def stream_run(self, thread_id: str, body: dict[str, Any]) -> RunResult:
        """Stream one run to its end; token times from ``messages`` and ``custom`` events."""
        body = {"assistant_id": self.config.assistant_id, "stream_mode": STREAM_MODE, **body}
        if self.config.context is not None:
            body["context"] = self.config.context
        run = RunResult(time.perf_counter(), time.time())
        try:
            async with self._session.post(
                f"{self.base_url}/threads/{thread_id}/runs/stream", json=body
            ) as resp:
                if resp.status == 503 and resp.headers.get("Retry-After"):
                    run.error, run.retry_after = REFUSED, float(resp.headers["Retry-After"])
                    return run
                if resp.status != 200:
                    run.error = f"http_{resp.status}"
                    return run
                async for event, data in frames(resp.content):
                    self._on_event(run, event, data)
                    if event in ("end", "error"):
                        break
        except Exception as exc:
            run.error = error_kind(exc)
        finally:
            run.ended = time.perf_counter()
        return run

    @staticmethod
    def _on_event(run: RunResult, event: str, data: bytes) -> None:
        if event == "messages":
            if b'"content":""' not in data and is_ai_text(data):
                mark_token(run)
        elif event == "custom":
            if b'"type":"token"' in data:
                mark_token(run)
        elif event == "values":
            if b'"__interrupt__"' in data:
                run.interrupted = True
        elif event == "error":
            run.error = f"stream_error:{stream_error_name(data)}"
        elif event == "end" and b'"status":"error"' in data:
            run.error = "run_error"


def is_ai_text(data: bytes) -> bool:
    """A ``messages`` event whose message is AI text (not a tool call chunk or a tool result)."""
    try:
        message = orjson.loads(data)[0]
    except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
        return False
    return bool(message.get("content")) and str(message.get("type", "")).lower().startswith("ai")


def mark_token(run: RunResult) -> None:
    now = time.perf_counter()
    if run.first_token is None:
        run.first_token = now
    run.last_token = now
    run.tokens += 1


def stream_error_name(data: bytes) -> str:
    try:
        return str(orjson.loads(data).get("error", "unknown"))
    except (orjson.JSONDecodeError, AttributeError):
        return "unknown"


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "disconnected"
    return type(exc).__name__


# ---------------------------------------------------------------------- window summaries


@dataclass
class ModelTime:
    """The stub's own time on a turn's critical path, per turn kind (seconds)."""

    to_first_token: dict[str, float]
    to_last_token: dict[str, float]

    def first(self, kind: str) -> float:
        return self.to_first_token.get(kind, 0.0)

    def last(self, kind: str) -> float:
        return self.to_last_token.get(kind, 0.0)


def summarise(records: list[TurnRecord], start: float, end: float, model: ModelTime,
              now: float | None = None) -> dict[str, Any]:
    """Figures of the turns that started in [start, end): rates, latencies, errors.

    Turns still running at ``now`` count as errors of kind ``incomplete`` (used when a
    staircase step is judged before its last turns have finished).
    """
    turns = [r for r in records if start <= r.started < end]
    ok = [r for r in turns if r.ok]
    refused = [r for r in turns if r.refused]
    errors: Counter[str] = Counter(r.error for r in turns if r.error and not r.refused)
    incomplete = sum(1 for r in turns if r.finished is None) if now is not None else 0
    if incomplete:
        errors["incomplete"] = incomplete
    span = max(end - start, 1e-9)
    ttft = [r.ttft for r in ok]
    overhead = [r.ttft - model.first(r.turn.kind) for r in ok]
    ttlt = [r.ttlt for r in ok]
    overhead_last = [r.ttlt - model.last(r.turn.kind) for r in ok]
    by_kind = {}
    for kind in sorted({r.turn.kind for r in ok}):
        mine = [r for r in ok if r.turn.kind == kind]
        by_kind[kind] = {
            "turns": len(mine),
            "ttft_ms": summary([r.ttft for r in mine], 1000),
            "model_to_first_token_ms": model.first(kind) * 1000,
            "model_to_last_token_ms": model.last(kind) * 1000,
        }
    runs = sum(1 for r in ok for run in r.runs if run.error != REFUSED)  # admitted runs
    return {
        "window_s": span,
        "turns": len(turns),
        "turns_ok": len(ok),
        "turns_per_s": len(ok) / span,
        "runs_per_s": runs / span,
        "ttft_ms": summary(ttft, 1000),
        "ttft_overhead_ms": summary(overhead, 1000),
        "ttlt_ms": summary(ttlt, 1000),
        "ttlt_overhead_ms": summary(overhead_last, 1000),
        "turn_ms": summary([r.finished - r.started - r.approval_wait for r in ok], 1000),
        "errors": dict(errors),
        "refused": len(refused),
        "refusal_ms": summary([r.runs[-1].ended - r.runs[-1].started for r in refused], 1000),
        "by_kind": by_kind,
    }
