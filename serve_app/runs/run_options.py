"""What a run record's ``kwargs`` ask of LangGraph beyond input and config: where to
start (a checkpoint, its namespace) and how to run (context, breakpoints, durability)."""

from __future__ import annotations

from typing import Any

GRAPH_OPTIONS = ("context", "interrupt_before", "interrupt_after", "durability")
CHECKPOINT_KEYS = ("checkpoint_id", "checkpoint_ns", "checkpoint_map")


def graph_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``graph.astream`` the run sets."""
    return {name: kwargs[name] for name in GRAPH_OPTIONS if kwargs.get(name) is not None}


def checkpoint_target(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``configurable`` keys of the checkpoint the run starts from (none: the latest)."""
    if not kwargs.get("checkpoint_id"):
        return {}
    return {name: kwargs[name] for name in CHECKPOINT_KEYS if kwargs.get(name)}
