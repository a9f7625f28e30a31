"""Progress lines stamped with the seconds since the run began (the budget is 15 minutes)."""

from __future__ import annotations

import time

_STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)
