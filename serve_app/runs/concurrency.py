"""How many runs one replica executes at once: as many as are served in time.

A fixed number is wrong whenever the capacity behind a replica changes (a noisy
neighbour, a heavier mix of turns, a smaller node, a saturated specialist deployment or
model server): too high and every admitted run slows down, too low and capacity is left
idle. ``LagLimiter`` watches two signals and adapts the slots, additive increase while
the slots are full and both are fine, multiplicative decrease once either is not,
between 1 and the configured ceiling (``api.max_concurrent_runs``):

- the replica's own event-loop lag (how late a short sleep wakes up: a CPU-bound loop);
- its runs' overhead (a run's time not spent in model calls or tools: graph steps,
  checkpoints, Ray hops, specialists' queues): when the median of recent runs grows more
  than ``api.overhead_budget_s`` past the lowest median seen lately, runs wait on
  something saturated downstream (a specialist deployment, Redis), and more runs at once
  would only wait longer. Medians compare like with like (the mix of turn kinds is
  steady; a 90th percentile judged the mix's spread and kept a half-idle box at 3 slots
  per replica, measured). The model's own time is left out: a slow model is not a reason
  to run fewer turns, and turn kinds differ by their model calls more than by overhead.
  The lowest median ages (so a lucky moment does not throttle the replica for good), a
  quarter as fast while every slot is in use: at the full rate, five minutes of overload
  let it (and the latency of every run admitted) drift up 82 % (1.002^300).

Runs past the slots wait in the pool's queue, where admission control bounds the wait.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Callable


class Slots:
    """A semaphore whose size can change while it is in use. One puller acquires; runs
    release."""

    def __init__(self, size: int):
        self.size = size
        self.used = 0
        self._freed = asyncio.Event()

    @property
    def full(self) -> bool:
        """Every slot is in use."""
        return self.used >= self.size

    async def acquire(self) -> None:
        while self.full:
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

    BASELINE_DRIFT = 1.002  # per window: an old lowest ages out within minutes...
    SATURATED_DRIFT = 1.0005  # ...or, while every slot is in use, within a quarter hour

    def __init__(self, slots: Slots, ceiling: int, target_ms: float,
                 overhead_budget_s: float = 0.5,
                 on_change: Callable[[int], None] = lambda size: None,
                 on_measure: Callable[[float], None] = lambda lag_ms: None,
                 tick_s: float = 0.05, window_s: float = 1.0, samples: int = 16):
        self.slots = slots
        self.ceiling = ceiling
        self.target_ms = target_ms
        self.overhead_budget_s = overhead_budget_s
        self.on_change = on_change
        self.on_measure = on_measure
        self.tick_s = tick_s
        self.window_s = window_s
        self.lag_ms = 0.0  # mean lag of the last window
        self.overheads: deque[float] = deque(maxlen=samples)  # recent runs' overheads (s)
        self.lowest: float | None = None

    def retune(self, ceiling: int, target_ms: float, overhead_budget_s: float) -> None:
        """New bounds from the operator: start again from half the ceiling, as at start."""
        self.ceiling, self.target_ms = ceiling, target_ms
        self.overhead_budget_s = overhead_budget_s
        self._resize(max(1, ceiling // 2))

    def run_ended(self, overhead_s: float) -> None:
        """A run here spent ``overhead_s`` outside model calls and tools."""
        self.overheads.append(overhead_s)

    async def run_forever(self) -> None:
        while True:
            self.lag_ms = await self.measure()
            self.on_measure(self.lag_ms)
            self.adjust(self.lag_ms, self.excess_overhead())

    def excess_overhead(self) -> float | None:
        """How far the recent runs' median overhead is above the lowest median seen
        lately, once there are a few runs to judge (updates that baseline)."""
        if len(self.overheads) < 4:
            return None
        typical = statistics.median(self.overheads)
        if self.lowest is None or typical < self.lowest:
            self.lowest = typical
        else:
            saturated = self.slots.full
            self.lowest *= self.SATURATED_DRIFT if saturated else self.BASELINE_DRIFT
        return typical - self.lowest

    async def measure(self) -> float:
        """Mean lateness (ms) of short sleeps over one window."""
        lags, end = [], time.monotonic() + self.window_s
        while time.monotonic() < end:
            asked = time.monotonic()
            await asyncio.sleep(self.tick_s)
            lags.append(time.monotonic() - asked - self.tick_s)
        return 1000 * sum(lags) / len(lags)

    def adjust(self, lag_ms: float, excess_s: float | None = None) -> None:
        size = self.slots.size
        late = excess_s is not None and excess_s > self.overhead_budget_s
        if lag_ms > self.target_ms or late:
            self._resize(max(1, int(size * self.DECREASE)))
            self.overheads.clear()  # judge the smaller size by its own runs
        elif lag_ms < self.target_ms / 2 and self.slots.full and \
                (excess_s is None or excess_s < self.overhead_budget_s / 2):
            self._resize(min(self.ceiling, size + 1))

    def _resize(self, size: int) -> None:
        if size != self.slots.size:
            self.slots.resize(size)
            self.on_change(size)
