"""How many runs one replica executes at once: as many as its event loop serves in time.

A fixed number is wrong whenever the CPU a replica gets changes (a noisy neighbour, a
heavier mix of turns, a smaller node): too high and every admitted run slows down (time
to first token grows with every run added to a saturated loop), too low and capacity is
left idle. ``LagLimiter`` measures the loop's scheduling lag (how late a short sleep
wakes up: the direct sign of a CPU-bound loop) and adapts the slots, additive increase
while the slots are full and the loop is prompt, multiplicative decrease once it lags,
between 1 and the configured ceiling (``api.max_concurrent_runs``). Runs past the slots
wait in the pool's queue, where admission control bounds the wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Slots:
    """A semaphore whose size can change while it is in use. One puller acquires; runs
    release."""

    def __init__(self, size: int):
        self.size = size
        self.used = 0
        self._freed = asyncio.Event()

    async def acquire(self) -> None:
        while self.used >= self.size:
            self._freed.clear()
            await self._freed.wait()
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._freed.set()

    def resize(self, size: int) -> None:
        self.size = size
        self._freed.set()


class LagLimiter:
    DECREASE = 0.75

    def __init__(self, slots: Slots, ceiling: int, target_ms: float,
                 on_change: Callable[[int], None] = lambda size: None,
                 tick_s: float = 0.05, window_s: float = 1.0):
        self.slots = slots
        self.ceiling = ceiling
        self.target_ms = target_ms
        self.on_change = on_change
        self.tick_s = tick_s
        self.window_s = window_s
        self.lag_ms = 0.0  # mean lag of the last window

    def retune(self, ceiling: int, target_ms: float) -> None:
        """New bounds from the operator: start again from half the ceiling, as at start."""
        self.ceiling, self.target_ms = ceiling, target_ms
        self._resize(max(1, ceiling // 2))

    async def run_forever(self) -> None:
        while True:
            self.lag_ms = await self.measure()
            self.adjust(self.lag_ms)

    async def measure(self) -> float:
        """Mean lateness (ms) of short sleeps over one window."""
        lags, end = [], time.monotonic() + self.window_s
        while time.monotonic() < end:
            asked = time.monotonic()
            await asyncio.sleep(self.tick_s)
            lags.append(time.monotonic() - asked - self.tick_s)
        return 1000 * sum(lags) / len(lags)

    def adjust(self, lag_ms: float) -> None:
        size = self.slots.size
        if lag_ms > self.target_ms:
            self._resize(max(1, int(size * self.DECREASE)))
        elif lag_ms < self.target_ms / 2 and self.slots.used >= size:
            self._resize(min(self.ceiling, size + 1))

    def _resize(self, size: int) -> None:
        if size != self.slots.size:
            self.slots.resize(size)
            self.on_change(size)
