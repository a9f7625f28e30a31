"""What a run streams: graph chunks turned into API events, and events framed as SSE.

API stream modes follow LangGraph Platform; ``chat`` is ours, for ``/api/chat``: plain
``token`` / ``progress`` / ``approval`` / ``answer`` events for simple clients.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessageChunk,
    message_chunk_to_message,
)

from serve_app.runs.jsonable import to_jsonable

GRAPH_MODE = {
    "values": "values",
    "updates": "updates",
    "messages-tuple": "messages",
    "messages": "messages",
    "custom": "custom",
    "debug": "debug",
    "tasks": "tasks",  # each task's start and result
    "checkpoints": "checkpoints",  # each checkpoint as it is saved
    "chat": "custom",
}
API_MODES = (frozenset(GRAPH_MODE) - {"chat"}) | {"events"}

Event = tuple[str, Any]
CONTROL_EVENTS = frozenset({"metadata", "error", "end"})  # of every run, whatever its modes


def graph_modes(api_modes: Iterable[str]) -> list[str]:
    """The LangGraph stream modes a run needs; specialists' tokens travel as ``custom``."""
    modes = {GRAPH_MODE[m] for m in api_modes} | {"custom"}
    if "chat" in api_modes:
        modes |= {"messages", "values"}
    return sorted(modes)


def convert(mode: str, chunk: Any, api_modes: frozenset[str],
            partials: dict[str, Any]) -> list[Event]:
    """Events for one ``(mode, chunk)`` of ``graph.astream``; ``partials`` holds the run's
    messages streamed so far (``messages`` mode)."""
    events: list[Event] = []
    if mode == "messages":
        message, metadata = chunk
        if "messages-tuple" in api_modes:
            events.append(("messages", [to_jsonable(message), to_jsonable(metadata)]))
        if "messages" in api_modes:
            events += _legacy_messages(message, metadata, partials)
        if "chat" in api_modes and isinstance(message, AIMessageChunk) and message.text:
            events.append(("token", {"role": "supervisor", "text": message.text}))
    elif mode == "custom":
        events += _custom(chunk, api_modes)
    elif mode == "values":
        if "values" in api_modes:
            events.append(("values", to_jsonable(chunk)))
    elif mode in api_modes:
        events.append((mode, to_jsonable(chunk)))
    return events


def event_in_modes(event: str, modes: frozenset[str]) -> bool:
    """Whether a run's stored event (``mode`` or ``mode|<namespace>``, as ``convert`` names
    it) is of one of the API ``modes``; the run's metadata, error and end always are."""
    base = event.split("|", 1)[0]
    if base in CONTROL_EVENTS:
        return True
    if base.startswith("messages/"):  # messages/partial, /complete, /metadata
        return "messages" in modes
    if base == "messages":
        return "messages-tuple" in modes
    return base in modes


def _custom(chunk: Any, api_modes: frozenset[str]) -> list[Event]:
    events: list[Event] = []
    if "custom" in api_modes:
        events.append(("custom", to_jsonable(chunk)))
    kind = chunk.get("type") if isinstance(chunk, dict) else None
    if kind == "token":
        if "messages-tuple" in api_modes:
            message = {"type": "AIMessageChunk", "content": chunk["text"],
                       "id": chunk.get("message_id"), "name": chunk["role"]}
            metadata = {"langgraph_node": "worker", "role": chunk["role"]}
            events.append(("messages", [message, metadata]))
        if "chat" in api_modes:
            events.append(("token", {"role": chunk["role"], "text": chunk["text"]}))
    elif kind == "progress" and "chat" in api_modes:
        events.append(("progress", {k: chunk.get(k) for k in ("role", "tool", "text")}))
    return events


def _legacy_messages(message: Any, metadata: dict,
                     partials: dict[str, BaseMessageChunk | None]) -> list[Event]:
    """``messages`` mode as LangGraph Platform sends it: while a message streams, the message
    so far (``messages/partial``); a message that arrives whole, ``messages/complete``."""
    events: list[Event] = []
    if message.id not in partials:
        partials[message.id] = None
        events.append(("messages/metadata", {message.id: {"metadata": to_jsonable(metadata)}}))
    if isinstance(message, BaseMessageChunk):
        so_far = partials[message.id]
        so_far = message if so_far is None else so_far + message
        partials[message.id] = so_far
        events.append(("messages/partial", [to_jsonable(message_chunk_to_message(so_far))]))
    else:
        events.append(("messages/complete", [to_jsonable(message)]))
    return events


def final_answer(values: dict[str, Any]) -> str:
    messages = values.get("messages") or []
    last = messages[-1] if messages else None
    return last.text if isinstance(last, AIMessage) else ""


def sse_frame(event: bytes, data: bytes, event_id: bytes | None) -> bytes:
    """One SSE frame around an event as stored: its data is compact JSON already (no raw
    newlines), so it is framed as it is, not parsed and dumped again."""
    if event_id is None:
        return b"event: %s\ndata: %s\n\n" % (event, data)
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id, event, data)


HEARTBEAT = b": heartbeat\n\n"
