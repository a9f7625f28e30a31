"""What a run asks of its graph: its input, its config (thread, checkpoint to start from,
fencing token, metadata), and the graph's stream as the API's events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from agents.redis_saver import LeanRedisSaver
from agents.streamed_state import StreamedState
from serve_app.runs.events import convert, graph_modes
from serve_app.runs.fencing import FENCE
from serve_app.runs.jsonable import to_jsonable
from serve_app.runs.run_options import checkpoint_target, graph_options


def graph_input(kwargs: dict[str, Any]) -> Any:
    """The run body's ``command`` or ``input`` as LangGraph wants it."""
    command = kwargs.get("command")
    if command:
        return Command(**{k: v for k, v in command.items() if v is not None})
    return kwargs.get("input")


def run_config(run: dict[str, Any], token: str | None) -> dict[str, Any]:
    config = dict(run["kwargs"].get("config") or {})
    configurable = {**(config.get("configurable") or {}), "thread_id": run["thread_id"]}
    configurable.update(checkpoint_target(run["kwargs"]))
    if token:
        configurable[FENCE] = token
    metadata = {**(config.get("metadata") or {}), "run_id": run["run_id"],
                "thread_id": run["thread_id"], "graph_id": run["graph_id"],
                "assistant_id": run["assistant_id"], "run_attempt": run["attempt"]}
    return {**config, "configurable": configurable, "metadata": metadata}


async def attempt_input(run: dict[str, Any], checkpointer: LeanRedisSaver) -> Any:
    """First attempt: the run's input. A retry that already made progress continues
    from its last checkpoint instead of adding the input twice."""
    if run["attempt"] > 1 and await checkpointer.alatest_checkpoint_id(run["thread_id"]) != \
            run.get("checkpoint_before"):
        return None
    return graph_input(run["kwargs"])


async def graph_events(graph: CompiledStateGraph, run: dict[str, Any], config: dict,
                       checkpointer: LeanRedisSaver, final: StreamedState
                       ) -> AsyncIterator[tuple[str, Any]]:
    """The API events of one run; ``events`` mode is LangChain's ``astream_events``.
    ``final`` follows the thread's state as streamed (``values`` and ``updates`` are
    always streamed for it; converted to events only if the run asked for them)."""
    api_modes = frozenset(run["kwargs"].get("stream_mode") or ["values"])
    graph_in = await attempt_input(run, checkpointer)
    if "events" in api_modes:
        async for event in graph.astream_events(graph_in, config, version="v2",
                                                **graph_options(run["kwargs"])):
            yield "events", to_jsonable(event)
        return
    partials: dict[str, Any] = {}
    subgraphs = bool(run["kwargs"].get("stream_subgraphs"))
    modes = sorted({*graph_modes(api_modes), "values", "updates"})
    async for part in graph.astream(graph_in, config, stream_mode=modes,
                                    subgraphs=subgraphs, **graph_options(run["kwargs"])):
        namespace, mode, chunk = part if subgraphs else ((), *part)
        if not namespace:
            final.follow(mode, chunk)
        suffix = "".join(f"|{step}" for step in namespace)  # e.g. updates|child:<task id>
        for event, data in convert(mode, chunk, api_modes, partials):
            yield event + suffix, data
