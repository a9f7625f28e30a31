"""Progress lines stamped with the seconds since the run began, and, once a run's stages are
known (``track``), where it is and how long it still needs: a standard run takes tens of
minutes, and whoever waits for it should see the stage, the step and the time left."""

from __future__ import annotations

import time

_STARTED = time.monotonic()


class Progress:
    """The run's stages in order with their estimated seconds (from the plan's durations).
    Time left = the estimates of the stages not begun + what the current one has left of
    its own (never below zero: a stage past its estimate only stops counting)."""

    def __init__(self, stages: list[tuple[str, float]]):
        self.estimates = dict(stages)
        self.order = [name for name, _ in stages]
        self.current: str | None = None
        self.since = time.monotonic()
        self.detail = ""

    def stage(self, name: str) -> None:
        """``name`` begins; every stage listed before it is over (skipped or done)."""
        self.current, self.since, self.detail = name, time.monotonic(), ""

    def revise(self, name: str, seconds: float) -> None:
        """A better estimate of a stage not begun (e.g. once the first staircase showed
        how many steps a walk takes)."""
        if name in self.estimates:
            self.estimates[name] = seconds

    def step(self, index: int, total: int, what: str) -> None:
        self.detail = f"step {index}/{total} at {what}"

    def remaining_s(self) -> float:
        if self.current not in self.estimates:
            return sum(self.estimates.values())
        at = self.order.index(self.current)
        spent = time.monotonic() - self.since
        return (max(0.0, self.estimates[self.current] - spent)
                + sum(self.estimates[name] for name in self.order[at + 1:]))

    def status(self) -> str:
        where = ", ".join(x for x in (self.current or "starting", self.detail) if x)
        return f"{where} | ~{_minutes(self.remaining_s())} left"


def _minutes(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


_progress: Progress | None = None


def track(progress: Progress | None) -> Progress | None:
    """Show ``progress`` on every line from now on (``None``: stop showing it)."""
    global _progress
    _progress = progress
    return progress


def say(message: str) -> None:
    status = f" | {_progress.status()}" if _progress else ""
    print(f"[{time.monotonic() - _STARTED:6.1f}s{status}] {message}", flush=True)
