"""Executes runs durably: at most one active run per thread across replicas, every event in
a Redis Stream, owners heart-beating, and a sweeper that re-dispatches orphaned runs.

A run reaches an executor through ``dispatch`` (in Serve: the supervisor deployment's own
handle, so autoscaling sees runs as requests). The executor queues it on its thread, takes
the thread lease with a fencing token when it is next, streams the graph, and finishes with
writes conditional on still holding that token. If its replica dies, the run lease expires;
any replica's sweeper then dispatches the run again (``attempt`` + 1) and it continues from
its last checkpoint, until ``max_attempts``. Cancel requests travel by Redis pub/sub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from redis.asyncio import Redis

from agents.redis_saver import LeanRedisSaver
from agents.settings import ApiSettings
from serve_app.event_log import EventWriter
from serve_app.events import convert, final_answer, graph_modes
from serve_app.fencing import FENCE, LeaseLost
from serve_app.jsonable import to_jsonable
from serve_app.keys import PREFIX, claim_key, run_lease_key, thread_lease_key
from serve_app.leases import Leases
from serve_app.records import TERMINAL, Records

log = logging.getLogger(__name__)
CANCEL_CHANNEL = f"{PREFIX}cancel"
HAND_BACK = "hand_back"

Dispatch = Callable[[str], Awaitable[None]]


def graph_input(kwargs: dict[str, Any]) -> Any:
    """The run body's ``command`` or ``input`` as LangGraph wants it."""
    command = kwargs.get("command")
    if command:
        return Command(**{k: v for k, v in command.items() if v is not None})
    return kwargs.get("input")


def run_config(run: dict[str, Any], token: str | None) -> dict[str, Any]:
    config = dict(run["kwargs"].get("config") or {})
    configurable = {**(config.get("configurable") or {}), "thread_id": run["thread_id"]}
    checkpoint_id = run["kwargs"].get("checkpoint_id")
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    if token:
        configurable[FENCE] = token
    metadata = {**(config.get("metadata") or {}), "run_id": run["run_id"],
                "thread_id": run["thread_id"], "graph_id": run["graph_id"],
                "assistant_id": run["assistant_id"], "run_attempt": run["attempt"]}
    return {**config, "configurable": configurable, "metadata": metadata}


def age_s(iso: str) -> float:
    return time.time() - datetime.fromisoformat(iso).timestamp()


class RunExecutor:
    def __init__(self, redis: Redis, graphs: dict[str, CompiledStateGraph],
                 settings: ApiSettings, replica_id: str,
                 checkpointer: LeanRedisSaver, dispatch: Dispatch | None = None):
        self.redis = redis
        self.records = Records(redis)
        self.leases = Leases(redis, settings.lease_ttl_s)
        self.graphs = graphs
        self.settings = settings
        self.replica_id = replica_id
        self.checkpointer = checkpointer
        self.dispatch: Dispatch = dispatch or self._dispatch_here
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancel_actions: dict[str, str] = {}
        self._background: list[asyncio.Task] = []
        self._local: set[asyncio.Task] = set()

    def start(self) -> None:
        """Listen for cancels and sweep for orphaned runs (call inside the event loop)."""
        self._background = [asyncio.create_task(self._listen_for_cancels()),
                            asyncio.create_task(self._sweep_forever())]

    async def _dispatch_here(self, run_id: str) -> None:
        task = asyncio.create_task(self.execute(run_id))
        self._local.add(task)
        task.add_done_callback(self._local.discard)

    async def cancel(self, run_id: str, action: str = "interrupt") -> None:
        await self.redis.publish(CANCEL_CHANNEL, json.dumps({"run_id": run_id, "action": action}))

    async def _listen_for_cancels(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(CANCEL_CHANNEL)
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            request = json.loads(message["data"])
            task = self._tasks.get(request["run_id"])
            if task is not None:
                self._cancel_actions[request["run_id"]] = request.get("action", "interrupt")
                task.cancel()

    def event_writer(self, run_id: str) -> EventWriter:
        return EventWriter(self.redis, run_id, self.settings.event_ttl_s)

    # one run
    async def execute(self, run_id: str) -> dict[str, Any] | None:
        """Run ``run_id`` here until it ends, is cancelled, or is lost to another replica."""
        run = await self.records.get_run(run_id)
        if run is None or run["status"] in TERMINAL or run_id in self._tasks:
            return run
        self._tasks[run_id] = asyncio.current_task()
        lease: dict[str, str | None] = {"token": None}
        heartbeat = asyncio.create_task(self._heartbeat(run, lease))
        events = self.event_writer(run_id)
        status, error = "success", None
        try:
            await self.leases.renew(run["thread_id"], run_id, None, self.replica_id)
            events.append("metadata", {"run_id": run_id, "attempt": run["attempt"]})
            while not (token := await self.leases.acquire(run["thread_id"], run_id)):
                await asyncio.sleep(0.05)
            lease["token"] = token
            run = await self._started(run)
            graph = self.graphs[run["graph_id"]]
            deadline = asyncio.timeout(self.settings.run_timeout_s)
            try:
                async with deadline:
                    async for event, data in self._events(graph, run, run_config(run, token)):
                        events.append(event, data)
            except TimeoutError:
                if not deadline.expired():
                    raise
                status, error = "timeout", {
                    "error": "RunTimeout",
                    "message": f"the run took longer than {self.settings.run_timeout_s} s "
                               "(api.run_timeout_s); the thread keeps its last checkpoint"}
        except asyncio.CancelledError:
            action = self._cancel_actions.pop(run_id, "interrupt")
            if action == HAND_BACK:
                await asyncio.shield(self._hand_back(run, lease["token"]))
                return None
            status = "interrupted"
            if action == "rollback":
                run["rolled_back_by_successor"] = True
        except LeaseLost:
            log.warning("run %s lost its thread lease; stopping without writes", run_id)
            return None
        except Exception as exc:
            log.exception("run %s failed", run_id)
            status, error = "error", {"error": type(exc).__name__, "message": str(exc)}
        finally:
            heartbeat.cancel()
            self._tasks.pop(run_id, None)
        return await asyncio.shield(self._finish(run, status, error, lease["token"], events))

    async def _heartbeat(self, run: dict[str, Any], lease: dict[str, str | None]) -> None:
        """Renew from its own task, so a busy event loop elsewhere does not starve it."""
        while True:
            await asyncio.sleep(self.settings.lease_ttl_s / 3)
            held = await self.leases.renew(run["thread_id"], run["run_id"], lease["token"],
                                           self.replica_id)
            if not held and lease["token"]:
                log.warning("run %s: thread lease taken over", run["run_id"])

    async def _started(self, run: dict[str, Any]) -> dict[str, Any]:
        """Mark the run running; remember where its thread stood, for retries and rollback."""
        thread_id = run["thread_id"]
        fields: dict[str, Any] = {"status": "running", "replica": self.replica_id}
        if "checkpoint_before" not in run:
            fields["checkpoint_before"] = await self._latest_checkpoint(run)
        rollback = run["kwargs"].get("rollback_to")
        if rollback is not None and not run.get("rolled_back"):
            if rollback.get("checkpoint_id") is None:
                await self.checkpointer.adelete_thread(thread_id)
            else:
                run["kwargs"]["checkpoint_id"] = rollback["checkpoint_id"]
            fields["rolled_back"] = True
            fields["kwargs"] = run["kwargs"]
        await self.records.update_thread(thread_id, status="busy")
        return await self.records.update_run(run["run_id"], **fields)

    async def _latest_checkpoint(self, run: dict[str, Any]) -> str | None:
        return await self.checkpointer.alatest_checkpoint_id(run["thread_id"])

    async def _input(self, run: dict[str, Any]) -> Any:
        """First attempt: the run's input. A retry that already made progress continues
        from its last checkpoint instead of adding the input twice."""
        if run["attempt"] > 1 and await self._latest_checkpoint(run) != \
                run.get("checkpoint_before"):
            return None
        return graph_input(run["kwargs"])

    async def _events(self, graph: CompiledStateGraph, run: dict[str, Any],
                      config: dict) -> AsyncIterator[tuple[str, Any]]:
        """The API events of one run; ``events`` mode is LangChain's ``astream_events``."""
        api_modes = frozenset(run["kwargs"].get("stream_mode") or ["values"])
        graph_in = await self._input(run)
        if "events" in api_modes:
            async for event in graph.astream_events(graph_in, config, version="v2"):
                yield "events", to_jsonable(event)
            return
        partials: dict[str, Any] = {}
        subgraphs = bool(run["kwargs"].get("stream_subgraphs"))
        async for part in graph.astream(graph_in, config, stream_mode=graph_modes(api_modes),
                                        subgraphs=subgraphs):
            namespace, mode, chunk = part if subgraphs else ((), *part)
            suffix = "".join(f"|{step}" for step in namespace)  # e.g. updates|child:<task id>
            for event, data in convert(mode, chunk, api_modes, partials):
                yield event + suffix, data

    async def _finish(self, run: dict[str, Any], status: str, error: dict | None,
                      token: str | None, events: EventWriter) -> dict[str, Any] | None:
        """Record the outcome only if this run still holds its thread, then free it."""
        run_id, thread_id = run["run_id"], run["thread_id"]
        if token and not await self.leases.holds(thread_id, token):
            return None  # another attempt owns the run now
        interrupts, answer = [], ""
        if not error:
            graph = self.graphs[run["graph_id"]]
            try:
                state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
            except Exception as exc:  # the run ended, but its thread cannot be read back
                log.exception("run %s: reading its final state failed", run_id)
                status, error = "error", {"error": type(exc).__name__, "message": str(exc)}
            else:
                interrupts = [{"value": i.value, "id": i.id} for i in state.interrupts]
                answer = final_answer(state.values)
        api_modes = run["kwargs"].get("stream_mode") or []
        if error:
            events.append("error", error)
        elif "chat" in api_modes:
            if interrupts:
                events.append("approval", to_jsonable(interrupts[0]))
            else:
                events.append("answer", {"text": answer})
        if token:
            thread_status = "error" if error else "interrupted" if interrupts else "idle"
            await self.records.update_thread(thread_id, status=thread_status, error=error)
        record = await self.records.update_run(run_id, status=status, error=error)
        events.append("end", {"run_id": run_id, "status": status})
        await events.flush()
        await self.leases.leave(thread_id, run_id, token)
        if run.get("rolled_back_by_successor"):  # rollback: the run is gone, as if never made
            await self.records.delete_run(run)
            return None
        return record

    async def _hand_back(self, run: dict[str, Any], token: str | None) -> None:
        """Leave the run pending for another replica: free its leases, keep it queued."""
        await self.records.update_run(run["run_id"], status="pending", handed_back=True)
        await self.redis.delete(run_lease_key(run["run_id"]))
        if token and await self.leases.holds(run["thread_id"], token):
            await self.redis.delete(thread_lease_key(run["thread_id"]))

    # orphans
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sweep failed")

    async def sweep_once(self) -> list[str]:
        """Dispatch again every run whose owner stopped heart-beating; returns their ids."""
        redispatched = []
        for run_id in await self.leases.inflight():
            if run_id in self._tasks or await self.leases.owner_alive(run_id):
                continue
            run = await self.records.get_run(run_id)
            if run is None or run["status"] in TERMINAL:
                await self.leases.leave(run["thread_id"] if run else "", run_id, None)
                continue
            if not run.get("handed_back") and age_s(run["updated_at"]) < \
                    self.settings.dispatch_grace_s:
                continue  # dispatched a moment ago: not picked up yet
            claim = claim_key(run_id, run["attempt"])
            if not await self.redis.set(claim, self.replica_id, nx=True, ex=300):
                continue  # another replica's sweeper took it
            if run["attempt"] >= self.settings.max_attempts:
                await self._give_up(run)
                continue
            await self.records.update_run(run_id, status="pending", handed_back=False,
                                          attempt=run["attempt"] + 1)
            log.warning("re-dispatching run %s (attempt %d)", run_id, run["attempt"] + 1)
            await self.dispatch(run_id)
            redispatched.append(run_id)
        return redispatched

    async def _give_up(self, run: dict[str, Any]) -> None:
        run_id, thread_id = run["run_id"], run["thread_id"]
        error = {"error": "RunAttemptsExhausted",
                 "message": f"the run lost its replica {run['attempt']} times "
                            f"(max_attempts={self.settings.max_attempts})"}
        holder = await self.redis.get(thread_lease_key(thread_id))
        token = holder.decode() if holder and holder.decode().startswith(run_id) else None
        await self.records.update_thread(thread_id, status="error", error=error)
        await self.records.update_run(run_id, status="error", error=error)
        events = self.event_writer(run_id)
        events.append("error", error)
        events.append("end", {"run_id": run_id, "status": "error"})
        await events.flush()
        await self.leases.leave(thread_id, run_id, token)

    async def hand_back_all(self) -> None:
        """Graceful shutdown: give every run of this replica back at once."""
        for run_id, task in list(self._tasks.items()):
            self._cancel_actions[run_id] = HAND_BACK
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def aclose(self) -> None:
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
