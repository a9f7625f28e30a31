"""Executes runs: one run per thread at a time, every event appended to a Redis Stream.

A run executes in a background task of the replica that accepted it, so a client that drops
does not stop it; any replica's reader tails the run's stream (resumable by event id). Cancel
requests go through Redis pub/sub, so they reach the owner from any replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from redis.asyncio import Redis

from agents.settings import ApiSettings
from serve_app.events import convert, final_answer, graph_modes
from serve_app.jsonable import dumps, to_jsonable
from serve_app.records import Records, active_key, events_key

log = logging.getLogger(__name__)
CANCEL_CHANNEL = "ac:cancel"

# Release / renew the thread lease only if this run still holds it.
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) end return 0")
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
          "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0")


def graph_input(kwargs: dict[str, Any]) -> Any:
    """The run body's ``command`` or ``input`` as LangGraph wants it."""
    command = kwargs.get("command")
    if command:
        return Command(**{k: v for k, v in command.items() if v is not None})
    return kwargs.get("input")


def run_config(run: dict[str, Any]) -> dict[str, Any]:
    config = dict(run["kwargs"].get("config") or {})
    configurable = {**(config.get("configurable") or {}), "thread_id": run["thread_id"]}
    checkpoint_id = run["kwargs"].get("checkpoint_id")
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {**config, "configurable": configurable,
            "metadata": {**(config.get("metadata") or {}), "run_id": run["run_id"]}}


class RunExecutor:
    def __init__(self, redis: Redis, graphs: dict[str, CompiledStateGraph],
                 settings: ApiSettings, replica_id: str):
        self.redis = redis
        self.records = Records(redis)
        self.graphs = graphs
        self.settings = settings
        self.replica_id = replica_id
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancel_actions: dict[str, str] = {}
        self._listener: asyncio.Task | None = None

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen_for_cancels())

    def submit(self, run_id: str) -> asyncio.Task:
        task = asyncio.create_task(self.execute(run_id))
        self._tasks[run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run_id, None))
        return task

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

    async def emit(self, run_id: str, event: str, data: Any) -> None:
        key = events_key(run_id)
        await self.redis.xadd(key, {"event": event, "data": dumps(data)})

    async def _acquire(self, run: dict[str, Any]) -> asyncio.Task:
        """Wait for the thread to be free (enqueue), then hold it until released."""
        key, ttl_ms = active_key(run["thread_id"]), int(self.settings.lease_ttl_s * 1000)
        while not await self.redis.set(key, run["run_id"], nx=True, px=ttl_ms):
            await asyncio.sleep(0.05)

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.lease_ttl_s / 3)
                await self.redis.eval(_RENEW, 1, key, run["run_id"], ttl_ms)

        return asyncio.create_task(renew())

    async def execute(self, run_id: str) -> dict[str, Any]:
        run = await self.records.get_run(run_id)
        graph = self.graphs[run["graph_id"]]
        config = run_config(run)
        api_modes = frozenset(run["kwargs"].get("stream_mode") or ["values"])
        status, error = "success", None
        await self.emit(run_id, "metadata", {"run_id": run_id, "attempt": run["attempt"]})
        await self.redis.expire(events_key(run_id), self.settings.event_ttl_s)
        renewal = None
        try:
            renewal = await self._acquire(run)
            await self.records.update_run(run_id, status="running", replica=self.replica_id)
            await self.records.update_thread(run["thread_id"], status="busy")
            async for event, data in self._events(graph, run, config, api_modes):
                await self.emit(run_id, event, data)
        except asyncio.CancelledError:
            status = "interrupted"
        except Exception as exc:
            log.exception("run %s failed", run_id)
            status, error = "error", {"error": type(exc).__name__, "message": str(exc)}
        finally:
            if renewal is not None:
                renewal.cancel()
            run = await self._finish(run, graph, config, status, error, api_modes)
        return run

    @staticmethod
    async def _events(graph: CompiledStateGraph, run: dict[str, Any], config: dict,
                      api_modes: frozenset[str]) -> AsyncIterator[tuple[str, Any]]:
        """The API events of one run; ``events`` mode is LangChain's ``astream_events``."""
        if "events" in api_modes:
            async for event in graph.astream_events(graph_input(run["kwargs"]), config,
                                                    version="v2"):
                yield "events", to_jsonable(event)
            return
        seen: set[str] = set()
        async for _ns, mode, chunk in graph.astream(
            graph_input(run["kwargs"]), config, stream_mode=graph_modes(api_modes),
            subgraphs=True,
        ):
            for event in convert(mode, chunk, api_modes, seen):
                yield event

    async def _finish(self, run: dict[str, Any], graph: CompiledStateGraph, config: dict,
                      status: str, error: dict | None, api_modes: frozenset[str]) -> dict:
        """Record the outcome, tell the stream, free the thread: shielded from cancellation."""
        async def finish() -> dict:
            run_id, thread_id = run["run_id"], run["thread_id"]
            state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
            interrupts = [{"value": i.value, "id": i.id} for i in state.interrupts]
            if error:
                await self.emit(run_id, "error", error)
            elif "chat" in api_modes:
                await self.emit_chat_outcome(run_id, state.values, interrupts)
            thread_status = "error" if error else "interrupted" if interrupts else "idle"
            await self.records.update_thread(thread_id, status=thread_status, error=error)
            record = await self.records.update_run(run_id, status=status, error=error,
                                                   cancel_action=self._cancel_actions.pop(
                                                       run_id, None))
            await self.emit(run_id, "end", {"run_id": run_id, "status": status})
            await self.redis.eval(_RELEASE, 1, active_key(thread_id), run_id)
            return record

        return await asyncio.shield(finish())

    async def emit_chat_outcome(self, run_id: str, values: dict, interrupts: list) -> None:
        if interrupts:
            await self.emit(run_id, "approval", interrupts[0])
        else:
            await self.emit(run_id, "answer", {"text": final_answer(values)})

    async def aclose(self) -> None:
        for task in [*self._tasks.values(), self._listener]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
