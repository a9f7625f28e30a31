"""A thread's state as a run streamed it: what reading it back after the run would give.

A run that went to its end streamed its state after every step (``values``), so its final
state needs no read-back from the checkpointer (a Redis round trip or more and every
message of the thread deserialised again). Interrupts arrive in ``values`` (an
``__interrupt__`` key) and ``updates``; a breakpoint (``interrupt_before``/``_after``) only in
``updates``, as an empty ``__interrupt__``.
"""

from __future__ import annotations

from typing import Any

INTERRUPT = "__interrupt__"  # the key of a streamed chunk that stopped at interrupts


class StreamedState:
    """Duck-types what callers read of ``graph.aget_state()``: ``values``, ``interrupts``
    and ``next`` (non-empty when the run stopped before the graph's end)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] | None = None  # None: no state streamed (read it back)
        self.interrupts: tuple = ()
        self.next: tuple = ()

    def follow(self, mode: str, chunk: Any) -> None:
        """Note one root-graph ``(mode, chunk)`` of ``graph.astream``."""
        if not isinstance(chunk, dict):
            return
        if mode == "values":
            self.values = {k: v for k, v in chunk.items() if k != INTERRUPT}
        if mode in ("values", "updates") and INTERRUPT in chunk:
            self.interrupts = tuple(chunk[INTERRUPT] or ()) or self.interrupts
            self.next = (INTERRUPT,)
