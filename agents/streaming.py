"""Relaying a specialist's events: in a context of their own, with tokens coalesced.

Every event a specialist streams costs a Ray generator item, a custom-stream write in the
supervisor, Redis Stream appends and SSE frames; per token, that is most of a run's serving
CPU. So consecutive tokens of one message are merged while they wait: the first token of a
message goes out at once (time to first token is untouched), later ones linger up to
``linger_s`` for company. Under load the queue fills by itself and batches grow with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from typing import Any

Event = dict[str, Any]
_END = object()


def mergeable(first: Event, second: Event) -> bool:
    """Two tokens of the same message, one right after the other."""
    return (first.get("type") == second.get("type") == "token"
            and first.get("role") == second.get("role")
            and first.get("message_id") == second.get("message_id"))


def merge(first: Event, second: Event) -> Event:
    return {**first, "text": first["text"] + second["text"]}


async def relay(events: AsyncIterator[Event], linger_s: float = 0.0) -> AsyncIterator[Event]:
    """Yield ``events``, produced by a task in a fresh context (so the caller's LangGraph
    config and stream handlers do not leak into the specialist's run), tokens coalesced."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1024)

    async def pump() -> None:
        try:
            async for event in events:
                await queue.put(event)
            await queue.put(_END)
        except BaseException as exc:  # re-raised in the caller's task below
            await queue.put(exc)

    task = asyncio.create_task(pump(), context=contextvars.Context())
    started: set[Any] = set()  # messages whose first token went out already
    held: Any = None  # taken from the queue, not merged: next to go out
    try:
        while True:
            item = held if held is not None else await queue.get()
            held = None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            if item.get("type") == "token":
                if item.get("message_id") in started:
                    item, held = await _gather_tokens(queue, item, linger_s)
                started.add(item.get("message_id"))
            yield item
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _gather_tokens(queue: asyncio.Queue[Any], token: Event,
                         linger_s: float) -> tuple[Event, Any]:
    """Merge the tokens that follow ``token`` within ``linger_s``; return the merged token
    and the first item that did not merge (or None)."""
    deadline = asyncio.get_running_loop().time() + linger_s
    while True:
        if queue.empty():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return token, None
            try:
                async with asyncio.timeout(left):
                    following = await queue.get()
            except TimeoutError:
                return token, None
        else:
            following = queue.get_nowait()
        if not isinstance(following, dict) or not mergeable(token, following):
            return token, following
        token = merge(token, following)
